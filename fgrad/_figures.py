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
:data:`fgrad._report.SMOOTH_WINDOW` steps before plotting (sweeps of short runs: at most a tenth of
the run, :func:`sweep_window`). Sweeps of variants give each curve its own colour
(:func:`curve_colors`): backprop curves in blues, forward-gradient curves in the other colours.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

from fgrad._functions import FUNCTIONS, MINIMA
from fgrad._report import (
    METHOD_LABELS,
    METHODS,
    SMOOTH_WINDOW,
    Excluded,
    MnistRun,
    TrajectoryRun,
    best_rates,
    depth_series,
    group_runs,
    group_variants,
    load_depth_sweep,
    load_mnist_runs,
    load_quality,
    load_trajectories,
    lr_stats,
    run_variant,
    smoothed_loss,
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


def band(ax: Axes, x: np.ndarray, ys: np.ndarray, method: str, label: str,
         color: str | None = None, marker: str | None = None) -> None:
    """The one curve kind of every line panel: mean over seeds, min–max over seeds shaded.

    Args:
      ax: the panel.
      x: (n,) abscissae.
      ys: (seeds, n) values.
      method: picks the colour (unless ``color`` is given).
      label: legend entry.
      color: the curve's colour (default: the method's).
      marker: a marker at each point (for sparse series).
    """
    idx = _thin(len(x))
    x, ys = np.asarray(x)[idx], np.asarray(ys)[:, idx]
    color = color or COLORS[method]
    ax.plot(x, ys.mean(axis=0), color=color, lw=1.3, label=label, marker=marker, ms=3)
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
    fig.subplots_adjust(left=0.95 / width, right=1 - 0.15 / width, bottom=0.55 / height,
                        top=1 - 0.75 / height, wspace=0.38, hspace=0.5)
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


def _mnist_curves(runs: Sequence[MnistRun], window: int = SMOOTH_WINDOW
                  ) -> dict[str, np.ndarray]:
    """A method's seeds as arrays: smoothed loss with its steps and times, raw times, evals."""
    sm = [smoothed_loss(r, window) for r in runs]
    return {"steps": _stack([s[0] for s in sm])[0], "loss_time": _stack([s[1] for s in sm]),
            "loss": _stack([s[2] for s in sm]), "step": _stack([r.step for r in runs])[0],
            "time": _stack([r.time for r in runs]),
            "eval_time": _stack([r.eval_time for r in runs]),
            "acc": _stack([r.test_acc for r in runs])}


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
    stats = lr_stats(seeds)  # T_f, T_b: the report's numbers (mean over seeds; inf: never)
    mark_times(axes[1], {m: (s.mean if (s := stats.get(f"T_{m[0]}")) else None)
                         for m in METHODS})
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


# ----------------------------------------------------------------------------- variant sweeps

_TAB10 = [to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
_TAB20 = [to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
# Backprop curves in blues; forward-gradient curves in tab10 (red first, blue and its light
# shade left out), then tab20's light shades.
PALETTES = {"backprop": [_TAB10[0], _TAB20[1], "#08306b", "#6baed6"],
            "forward": [_TAB10[3], *(_TAB10[i] for i in (1, 2, 4, 5, 6, 7, 8, 9)),
                        *(_TAB20[i] for i in (7, 3, 5, 9, 11, 13, 15, 17, 19))]}
Curves = dict[tuple[str, float], list[MnistRun]]


def curve_colors(curves: Sequence[tuple[Hashable, str]]) -> dict[Hashable, str]:
    """A colour per curve, given (key, method) pairs in legend order."""
    used: dict[str, int] = {}
    colors = {}
    for key, method in curves:
        palette = PALETTES.get(method, PALETTES["forward"])
        colors[key] = palette[used.get(method, 0) % len(palette)]
        used[method] = used.get(method, 0) + 1
    return colors


def sweep_window(runs: Sequence[MnistRun]) -> int:
    """Smoothing window of a sweep's loss curves: :data:`SMOOTH_WINDOW` steps, cut to a tenth of
    the shortest run so that short runs still draw a curve."""
    return max(1, min(SMOOTH_WINDOW, min(len(r.loss) for r in runs) // 10))


def _loss_panels(ax_iter: Axes, ax_time: Axes, curves: Curves, colors: dict[Hashable, str],
                 tag: str = "") -> None:
    """Smoothed training loss vs iterations and vs wall time, one band per (variant, η₀)."""
    window = sweep_window([r for runs in curves.values() for r in runs])
    for (variant, lr), runs in curves.items():
        c = _mnist_curves(runs, window)
        label, color = f"{variant}, η₀ = {lr:g}", colors[(variant, lr)]
        band(ax_iter, c["steps"], c["loss"], runs[0].method, label, color)
        band(ax_time, c["loss_time"].mean(axis=0), c["loss"], runs[0].method, label, color)
    smooth = f"training loss (mean of {window} steps)"
    style_axes(ax_iter, "iteration", smooth, f"loss vs iterations{tag}", logy=True)
    style_axes(ax_time, "wall time (s)", smooth, f"loss vs time{tag}", logy=True)


def _cosine_panel(ax: Axes, curves: Curves, colors: dict[Hashable, str]) -> None:
    """Logged cosine with the exact gradient vs step, for the curves that logged it."""
    for (variant, lr), runs in curves.items():
        logged = [r for r in runs if r.cosine.size]
        if logged:
            band(ax, _stack([r.diag_step for r in logged])[0],
                 _stack([r.cosine for r in logged]), runs[0].method,
                 f"{variant}, η₀ = {lr:g}", colors[(variant, lr)], marker="o")
    style_axes(ax, "iteration", "cos(estimate, exact gradient)",
               "cosine with the exact gradient", logy=True)


def _curves(runs: Sequence[MnistRun]) -> Curves:
    """Runs by (variant, η₀), in variant then η₀ order; seeds in order."""
    return {(v, lr): [seeds[s] for s in sorted(seeds)]
            for v, by_lr in group_variants(runs).items() for lr, seeds in by_lr.items()}


def plot_k_sweep(data: tuple[list[MnistRun], list[Excluded]], name: str) -> Figure | None:
    """Multi-tangent sweep: loss vs iterations, loss vs time, cosine vs iterations, one curve
    per (variant, η₀); runs left out are not drawn."""
    runs, _ = data
    if not runs:
        return None
    curves = _curves(runs)
    colors = curve_colors([(k, r[0].method) for k, r in curves.items()])
    fig, axes = _new_figure(1, 3)
    _loss_panels(axes[0, 0], axes[0, 1], curves, colors)
    _cosine_panel(axes[0, 2], curves, colors)
    fig.suptitle(f"{name}: K tangents per step, mean or projection (mean over seeds, min–max "
                 "shaded)", fontsize=11)
    return fig


def _final_loss_panel(ax: Axes, runs: Sequence[MnistRun], excluded: Sequence[Excluded],
                      colors: dict[Hashable, str], best: dict[str, float]) -> None:
    """Final training loss vs η₀ per variant (min–max bars over seeds); diverged or unfinished
    runs as crosses at the top; each variant's best η₀ circled."""
    for variant, by_lr in group_variants(runs).items():
        loss = {lr: np.array([r.summary["final_train_loss"] for r in seeds.values()], float)
                for lr, seeds in by_lr.items()}
        mean = {lr: v.mean() for lr, v in loss.items()}
        err = [[mean[lr] - v.min() for lr, v in loss.items()],
               [v.max() - mean[lr] for lr, v in loss.items()]]
        ax.errorbar(list(loss), list(mean.values()), yerr=err, color=colors[variant],
                    marker="o", ms=3, lw=1.2, capsize=2, label=variant)
        if variant in best:
            ax.plot(best[variant], mean[best[variant]], "o", ms=9, mfc="none",
                    mec=colors[variant])
    for e in excluded:
        ax.plot(float(e.summary["learning_rate"]), 0.96, "x", ms=7, mew=1.5,
                color=colors.get(run_variant(e.summary), "black"),
                transform=ax.get_xaxis_transform())
    if excluded:
        ax.plot([], [], "x", color="black", label="diverged / unfinished")
    ax.plot([], [], "o", ms=9, mfc="none", mec="black", label="best η₀")
    ax.set_xscale("log")
    style_axes(ax, "η₀ (log scale)", "final training loss (mean of last 100 steps)",
               "final training loss vs η₀", logy=True)


def plot_lr_sweep(data: tuple[list[MnistRun], list[Excluded]], name: str) -> Figure | None:
    """Learning-rate sweep: final loss vs η₀ per variant, then each variant's loss at its best
    η₀ vs iterations and vs time."""
    runs, excluded = data
    if not runs:
        return None
    variants = group_variants(runs)
    extra = [run_variant(e.summary) for e in excluded]
    method = {**{run_variant(e.summary): e.summary["method"] for e in excluded},
              **{v: next(iter(next(iter(by_lr.values())).values())).method
                 for v, by_lr in variants.items()}}
    colors = curve_colors([(v, method[v]) for v in dict.fromkeys([*variants, *extra])])
    best = best_rates(runs, excluded)
    curves = {(v, lr): runs for (v, lr), runs in _curves(runs).items() if best.get(v) == lr}
    fig, axes = _new_figure(1, 3)
    _final_loss_panel(axes[0, 0], runs, excluded, colors, best)
    _loss_panels(axes[0, 1], axes[0, 2], curves, {k: colors[k[0]] for k in curves},
                 " (best η₀)")
    fig.suptitle(f"{name}: learning-rate sweep per method and optimizer (mean over seeds, "
                 "min–max shown)", fontsize=11)
    return fig


# ----------------------------------------------------------------------------- estimator quality

POINT_MARKERS = {"init": "o", "trained": "s"}
POINT_LABELS = {"init": "at initialisation", "trained": "after training"}


def _estimators(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(distribution, combine) → colour, in the rows' order."""
    kinds = list(dict.fromkeys((r["distribution"], r["combine"]) for r in rows))
    return curve_colors([(k, "forward") for k in kinds])


def _cos2_panel(ax: Axes, rows: Sequence[dict[str, Any]], colors: dict[Hashable, str]) -> None:
    """E[cos²] vs K (log-log): measured markers per point, theory dashed per estimator."""
    for (dist, combine), color in colors.items():
        mine = [r for r in rows if (r["distribution"], r["combine"]) == (dist, combine)]
        theory = sorted({(r["num_tangents"], r["cos2_theory"]) for r in mine
                         if r["cos2_theory"] is not None})
        if theory:
            ax.plot(*zip(*theory), "--", color=color, lw=1.0)
        for point, marker in POINT_MARKERS.items():
            pts = sorted((r["num_tangents"], r["cos2_mean"]) for r in mine if r["point"] == point)
            if pts:
                ax.plot(*zip(*pts), marker, color=color, ms=5, mfc=color if point == "init"
                        else "none", label=f"{dist}/{combine}" if point == "init" else None)
    for point, marker in POINT_MARKERS.items():
        ax.plot([], [], marker, color="black", mfc="black" if point == "init" else "none",
                label=f"measured, {point}")
    ax.plot([], [], "--", color="black", label="theory")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ks = sorted({r["num_tangents"] for r in rows})
    ax.set_xticks(ks, [str(k) for k in ks])
    for axis in (ax.xaxis, ax.yaxis):  # decades and the Ks only: no 2×10⁰-style minor labels
        axis.set_minor_formatter(NullFormatter())


def _cosine_boxes(ax: Axes, rows: Sequence[dict[str, Any]], colors: dict[Hashable, str]) -> None:
    """Boxes of the M cosines per K, one per estimator side by side (whiskers 1.5 IQR)."""
    ks = sorted({r["num_tangents"] for r in rows})
    width = 0.8 / len(colors)
    for j, (kind, color) in enumerate(colors.items()):
        mine = {r["num_tangents"]: r["cosine"] for r in rows
                if (r["distribution"], r["combine"]) == kind}
        pos = [i + (j - (len(colors) - 1) / 2) * width for i, k in enumerate(ks) if k in mine]
        if not pos:
            continue
        ax.boxplot([mine[k] for k in ks if k in mine], positions=pos, widths=0.85 * width,
                   patch_artist=True, boxprops={"facecolor": color, "alpha": 0.5},
                   medianprops={"color": "black"}, flierprops={"ms": 2},
                   manage_ticks=False)
        ax.plot([], [], "s", color=color, alpha=0.5, label=f"{kind[0]}/{kind[1]}")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])


def plot_quality(models: tuple[dict[str, dict[str, Any]], list[Excluded]], name: str
                 ) -> Figure | None:
    """Estimator quality, one row per model: E[cos²] vs K against theory, and the distribution
    of the cosine per K at each parameter point."""
    by_model = models[0]
    if not by_model:
        return None
    points = list(dict.fromkeys(r["point"] for s in by_model.values() for r in s["rows"]))
    fig, axes = _new_figure(len(by_model), 1 + len(points))
    for row, (model, summary) in zip(axes, by_model.items()):
        rows = summary["rows"]
        colors = _estimators(rows)
        _cos2_panel(row[0], rows, colors)
        style_axes(row[0], "K (tangents)", "E[cos²(estimate, ∇)]",
                   f"{model}: E[cos²] vs K (n = {rows[0]['n']})")
        for ax, point in zip(row[1:], points):
            _cosine_boxes(ax, [r for r in rows if r["point"] == point], colors)
            style_axes(ax, "K (tangents)", "cos(estimate, ∇)",
                       f"{model}: cosine {POINT_LABELS.get(point, point)} "
                       f"(M = {rows[0]['samples']})", logy=True)
    fig.suptitle(f"{name}: forward-gradient estimates against the exact gradient (markers: "
                 "measured; dashed: theory)", fontsize=11)
    return fig


# ----------------------------------------------------------------------------- depth sweep


def plot_depth_sweep(result: dict[str, Any] | None, name: str) -> Figure | None:
    """Depth sweep, one row per batch size: R_f and R_b vs depth, R_f/R_b vs depth, and the
    peak memory of both steps vs depth (total solid, beyond parameter-sized buffers dashed)."""
    if result is None:
        return None
    batch_sizes = sorted({r["batch_size"] for r in result["rows"]})
    fig, axes = _new_figure(len(batch_sizes), 3)
    for row, b in zip(axes, batch_sizes):
        s = depth_series(result, b)
        for key, method in (("f", "forward"), ("b", "backprop")):
            row[0].plot(s["depth"], s[f"R_{key}"], "o-", color=COLORS[method],
                        label=f"R_{key} ({METHOD_LABELS[method]})")
            row[2].plot(s["depth"], s[f"{key}_total"], "o-", color=COLORS[method],
                        label=f"{METHOD_LABELS[method]}: total")
            row[2].plot(s["depth"], s[f"{key}_rest"], "s--", color=COLORS[method],
                        label=f"{METHOD_LABELS[method]}: beyond parameter-sized")
        row[1].plot(s["depth"], s["R_f"] / s["R_b"], "o-", color="k", label="R_f / R_b")
        row[1].axhline(1.0, color="gray", lw=0.8, ls=":")
        for ax in row:
            ax.set_xscale("log")
        style_axes(row[0], "depth (hidden layers)", "step time / time of f",
                   f"batch {b}: runtime cost")
        style_axes(row[1], "depth (hidden layers)", "R_f / R_b", f"batch {b}: relative cost")
        style_axes(row[2], "depth (hidden layers)", "peak memory (MiB)",
                   f"batch {b}: XLA peak memory", logy=True)
    fig.suptitle(f"{name}: MLP width {result.get('config', {}).get('width', '?')}", fontsize=11)
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
    "estimator_quality": FigureSpec(load_quality, plot_quality),
    "k_sweep": FigureSpec(load_mnist_runs, plot_k_sweep),
    "lr_sweep": FigureSpec(load_mnist_runs, plot_lr_sweep),
    "depth_sweep": FigureSpec(load_depth_sweep, plot_depth_sweep),
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
