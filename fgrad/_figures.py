"""Paper-style figures (PNG and PDF, Agg backend) made only from results files.

Every figure reads the files an experiment wrote under ``OUT/<experiment>/`` (through the
loaders of :mod:`fgrad._report`) and never reruns training. :data:`FIGURES` maps an experiment
folder to a :class:`FigureSpec` (load, draw); :func:`make_figures` draws every one whose folder
exists. One helper per panel kind: :func:`band` (mean line, min–max band), :func:`contour`,
:func:`mark_times`, :func:`style_axes`.

Conventions, the same in every figure: forward gradient in :data:`COLORS` ``["forward"]``,
backprop in ``["backprop"]``; a line is the mean over seeds and the shaded band the min–max
range over seeds; a "vs time" curve is drawn against the mean over seeds of the wall time at
each iteration. MNIST training losses are smoothed by a trailing running mean of
:data:`fgrad._report.SMOOTH_WINDOW` steps before plotting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

from fgrad._functions import FUNCTIONS, MINIMA
from fgrad._report import (
    METHOD_LABELS,
    METHODS,
    SMOOTH_WINDOW,
    MnistRun,
    TrajectoryRun,
    best_loss,
    group_runs,
    load_mnist_runs,
    load_trajectories,
    smoothed_loss,
    time_to_reach,
)

COLORS = {"forward": "#d62728", "backprop": "#1f77b4"}
MAX_POINTS = 2_000        # points per plotted line (longer series are subsampled evenly)
PANEL_SIZE = (4.0, 3.1)   # inches per panel
FORMATS = ("png", "pdf")
# Contour windows that show the paper's view; widened to hold every trajectory.
CONTOUR_BOX = {"beale": ((-0.5, 4.0), (-1.0, 1.5)), "rosenbrock": ((-1.5, 1.5), (-0.5, 1.5))}


# ----------------------------------------------------------------------------- panel helpers


def _thin(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread entries of ``n``, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def _stack(series: Sequence[np.ndarray]) -> np.ndarray:
    """Seeds' series as one (seeds, n) array, cut to the shortest."""
    n = min(len(s) for s in series)
    return np.stack([np.asarray(s[:n], np.float64) for s in series])


def band(ax: Axes, x: np.ndarray, ys: np.ndarray, method: str, label: str) -> None:
    """The one curve kind of every line panel: mean over seeds, min–max over seeds shaded.

    Args:
      ax: the panel.
      x: (n,) abscissae.
      ys: (seeds, n) values.
      method: picks the colour.
      label: legend entry.
    """
    idx = _thin(len(x))
    x, ys = np.asarray(x)[idx], np.asarray(ys)[:, idx]
    color = COLORS[method]
    ax.plot(x, ys.mean(axis=0), color=color, lw=1.3, label=label)
    if ys.shape[0] > 1:
        ax.fill_between(x, ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.2, lw=0)


def style_axes(ax: Axes, xlabel: str, ylabel: str, title: str = "", logy: bool = False) -> None:
    """Labels (with units), optional log y, grid and legend of a panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if logy:
        _log_y(ax)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5, loc="best", framealpha=0.7)


def _log_y(ax: Axes) -> None:
    """Log y; within less than a decade, evenly spaced ticks read as plain numbers (2.25, not
    2.25×10⁰)."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 10:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.yaxis.set_minor_formatter(NullFormatter())


def mark_times(ax: Axes, times: dict[str, float | None]) -> None:
    """Vertical dotted lines where each method first reaches a target (inf: a legend note)."""
    for method, t in times.items():
        if t is None:
            continue
        name = METHOD_LABELS[method]
        if np.isfinite(t):
            ax.axvline(t, color=COLORS[method], ls=":", lw=1.2, label=f"{name}: {t:.3g} s")
        else:
            ax.plot([], [], color=COLORS[method], ls=":", label=f"{name}: not reached")


def contour(ax: Axes, fn_name: str, trajectories: dict[str, np.ndarray]) -> None:
    """Log-spaced contours of a test function, every seed's trajectory (thin), start and
    minimum (star).

    Args:
      ax: the panel.
      fn_name: a key of :data:`fgrad._functions.FUNCTIONS`.
      trajectories: method → (seeds, steps+1, 2) iterates.
    """
    (x0, x1), (y0, y1) = _contour_box(fn_name, trajectories.values())
    gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), jnp.float32)
    z = np.asarray(jax.jit(jax.vmap(FUNCTIONS[fn_name]))(pts)).reshape(gx.shape)
    z = np.maximum(z, 1e-12)
    levels = np.logspace(np.log10(max(z.min(), 1e-3)), np.log10(z.max()), 18)
    ax.contour(gx, gy, z, levels=levels, norm=LogNorm(), cmap="viridis", linewidths=0.6,
               alpha=0.7)
    for method, xs in trajectories.items():
        for i, path in enumerate(xs):
            idx = _thin(len(path))
            ax.plot(path[idx, 0], path[idx, 1], color=COLORS[method], lw=0.5, alpha=0.6,
                    label=METHOD_LABELS[method] if i == 0 else None)
        ax.plot(*xs[0, 0], "o", color="black", ms=4)
    ax.plot(*MINIMA[fn_name], "*", color="gold", mec="black", ms=13, label="minimum", zorder=5)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def _contour_box(fn_name: str, trajectories) -> tuple[tuple[float, float], tuple[float, float]]:
    (x0, x1), (y0, y1) = CONTOUR_BOX.get(fn_name, ((-2.0, 2.0), (-2.0, 2.0)))
    pts = np.concatenate([t.reshape(-1, 2) for t in trajectories])
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if pts.size:
        lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
        pad = 0.05 * (hi - lo + 1e-9)
        x0, y0 = min(x0, lo[0] - pad[0]), min(y0, lo[1] - pad[1])
        x1, y1 = max(x1, hi[0] + pad[0]), max(y1, hi[1] + pad[1])
    return (float(x0), float(x1)), (float(y0), float(y1))


def _new_figure(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    """A grid of panels with fixed margins (inches, so the same for any grid; a layout engine
    would cost seconds per figure)."""
    width, height = PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 0.4
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.55 / height,
                        top=1 - 0.75 / height, wspace=0.3, hspace=0.5)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save(fig: Figure, fig_dir: Path, name: str) -> list[Path]:
    """Saves ``fig_dir/name.png`` (150 dpi) and ``.pdf``; returns their paths."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = fig_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- test functions


def _per_iteration_time(run: TrajectoryRun) -> np.ndarray:
    """(seeds, steps+1) cumulative seconds at each iteration, interpolated between the times
    read at chunk boundaries."""
    its = np.arange(run.f.shape[1])
    return np.stack([np.interp(its, run.time_steps, t) for t in run.time])


def _trajectory_row(axes: Sequence[Axes], fn_name: str, runs: dict[str, TrajectoryRun]) -> None:
    title = fn_name.capitalize()
    for method, run in runs.items():
        label = f"{METHOD_LABELS[method]}, η = {run.fn_config['learning_rate']:g}"
        f = np.maximum(run.f.astype(np.float64), np.finfo(np.float32).tiny)
        band(axes[0], np.arange(f.shape[1]), f, method, label)
        band(axes[1], _per_iteration_time(run).mean(axis=0), f, method, label)
        band(axes[2], run.time_steps, run.time, method, label)
    style_axes(axes[0], "iteration", "f(x)", f"{title}: f(x) vs iterations", logy=True)
    style_axes(axes[1], "wall time (s)", "f(x)", f"{title}: f(x) vs time", logy=True)
    style_axes(axes[2], "iteration", "wall time (s)", f"{title}: time vs iterations")
    contour(axes[3], fn_name, {m: r.x for m, r in runs.items()})
    style_axes(axes[3], "x₁", "x₂", f"{title}: trajectories (all seeds)")


def load_test_functions(exp_dir: Path) -> dict[str, dict[str, TrajectoryRun]]:
    """Complete test-function results by function, then method."""
    runs, _ = load_trajectories(exp_dir)
    by_fn: dict[str, dict[str, TrajectoryRun]] = {}
    for r in sorted(runs, key=lambda r: (r.function, METHODS.index(r.method))):
        by_fn.setdefault(r.function, {})[r.method] = r
    return by_fn


def plot_test_functions(by_fn: dict[str, dict[str, TrajectoryRun]], name: str
                        ) -> Figure | None:
    """Beale and Rosenbrock (rows): f vs iterations, f vs time, time vs iterations, contour."""
    if not by_fn:
        return None
    fig, axes = _new_figure(len(by_fn), 4)
    for row, (fn_name, fn_runs) in zip(axes, by_fn.items()):
        _trajectory_row(row, fn_name, fn_runs)
    fig.suptitle("Test functions: forward gradient vs backprop (mean over seeds, min–max "
                 "shaded)", fontsize=11)
    return fig


# ----------------------------------------------------------------------------- MNIST


def _mnist_curves(runs: Sequence[MnistRun]) -> dict[str, np.ndarray]:
    """A method's seeds as arrays: smoothed loss with its steps and times, raw times, evals."""
    sm = [smoothed_loss(r) for r in runs]
    return {"steps": _stack([s[0] for s in sm])[0], "loss_time": _stack([s[1] for s in sm]),
            "loss": _stack([s[2] for s in sm]), "step": _stack([r.step for r in runs])[0],
            "time": _stack([r.time for r in runs]),
            "eval_time": _stack([r.eval_time for r in runs]),
            "acc": _stack([r.test_acc for r in runs])}


def _reach_times(seeds: dict[int, dict[str, MnistRun]]) -> dict[str, float | None]:
    """Mean over seeds (with both methods) of each method's time to backprop's best loss;
    inf when forward gradient reaches it in no seed."""
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for runs in seeds.values():
        if all(m in runs for m in METHODS):
            target = best_loss(runs["backprop"])
            for m in METHODS:
                times[m].append(time_to_reach(runs[m], target))
    out: dict[str, float | None] = {}
    for m, ts in times.items():
        finite = [t for t in ts if np.isfinite(t)]
        out[m] = float(np.mean(finite)) if finite else (np.inf if ts else None)
    return out


def _mnist_row(axes: Sequence[Axes], lr: float, seeds: dict[int, dict[str, MnistRun]]) -> None:
    by_method = {m: [runs[m] for _, runs in sorted(seeds.items()) if m in runs] for m in METHODS}
    smooth = f"training loss (mean of {SMOOTH_WINDOW} steps)"
    for method, runs in by_method.items():
        if not runs:
            continue
        c = _mnist_curves(runs)
        label = f"{METHOD_LABELS[method]}, η₀ = {lr:g}"
        band(axes[0], c["steps"], c["loss"], method, label)
        band(axes[1], c["loss_time"].mean(axis=0), c["loss"], method, label)
        band(axes[2], c["step"], c["time"], method, label)
        band(axes[3], c["eval_time"].mean(axis=0), c["acc"], method, label)
    mark_times(axes[1], _reach_times(seeds))
    tag = f"η₀ = {lr:g}"
    style_axes(axes[0], "iteration", smooth, f"loss vs iterations ({tag})", logy=True)
    style_axes(axes[1], "wall time (s)", smooth, f"loss vs time ({tag})", logy=True)
    style_axes(axes[2], "iteration", "wall time (s)", f"time vs iterations ({tag})")
    style_axes(axes[3], "wall time (s)", "test accuracy", f"test accuracy vs time ({tag})")


def load_mnist(exp_dir: Path) -> dict[float, dict[int, dict[str, MnistRun]]]:
    """Complete MNIST runs by learning rate, seed and method."""
    return group_runs(load_mnist_runs(exp_dir)[0])


def plot_mnist(groups: dict[float, dict[int, dict[str, MnistRun]]], name: str
               ) -> Figure | None:
    """An MNIST experiment, one row per learning rate: loss vs iterations, loss vs time (marked
    where each method first reaches backprop's best loss), time vs iterations, accuracy vs
    time."""
    if not groups:
        return None
    fig, axes = _new_figure(len(groups), 4)
    for row, (lr, seeds) in zip(axes, groups.items()):
        _mnist_row(row, lr, seeds)
    fig.suptitle(f"{name}: forward gradient vs backprop (mean over seeds, min–max shaded; "
                 "dotted: first time each reaches backprop's best smoothed loss)", fontsize=11)
    return fig


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class FigureSpec:
    """How to draw one experiment's figure: ``load`` reads its results folder (raising
    ResultsError for a bad file), ``draw`` makes the figure from that (None: nothing to draw)."""

    load: Callable[[Path], Any]
    draw: Callable[[Any, str], Figure | None]


MNIST_FIGURE = FigureSpec(load_mnist, plot_mnist)
FIGURES: dict[str, FigureSpec] = {
    "test_functions": FigureSpec(load_test_functions, plot_test_functions),
    "logreg": MNIST_FIGURE,
    "mlp": MNIST_FIGURE,
    "cnn": MNIST_FIGURE,
}


def make_figures(out: str | Path, figures: dict[str, FigureSpec] | None = None) -> list[Path]:
    """Draws every registered figure whose results folder exists under ``out``.

    All results are read before anything is drawn, so a bad file fails fast.

    Args:
      out: the preset's results folder (``results/<preset>``).
      figures: experiment folder → :class:`FigureSpec` (default :data:`FIGURES`).

    Returns:
      The files written, ``out/figures/<experiment>.{png,pdf}``.

    Raises:
      ResultsError: naming the file, when a results file is missing or malformed.
    """
    out = Path(out)
    specs = figures or FIGURES
    loaded = {name: specs[name].load(out / name) for name in specs if (out / name).is_dir()}
    written: list[Path] = []
    for name, data in loaded.items():
        fig = specs[name].draw(data, name)
        if fig is not None:
            written += save(fig, out / "figures", name)
    return written
