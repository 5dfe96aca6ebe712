"""Panel helpers of every figure (Agg backend; figures are made only from results files).

One helper per panel kind: :func:`band` (mean line bold, each seed thin), :func:`contour`,
:func:`mark_times`, :func:`style_axes`; :func:`_new_figure` lays out a grid of panels and
:func:`save` writes it as PNG and PDF.

Conventions, the same in every figure: forward gradient in :data:`COLORS` ``["forward"]``, backprop
in ``["backprop"]``; a bold line is the mean over seeds, thin lines of the same colour each seed's
own curve (the legend gives the seed count); a "vs time" curve is drawn against the mean over seeds
of the wall time at each iteration. MNIST training losses are smoothed by a trailing running mean of
:data:`fgrad.analysis.metrics.SMOOTH_WINDOW` steps before plotting (sweeps of short runs: at most a
tenth of the run, :func:`sweep_window`). Sweeps of variants give each curve its own colour
(:func:`curve_colors`): backprop curves in blues, forward-gradient curves in the other colours.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import (
    LogFormatterSciNotation,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    ScalarFormatter,
)

from fgrad._functions import FUNCTIONS, MINIMA
from fgrad.analysis.metrics import METHOD_LABELS, SMOOTH_WINDOW, group_variants, smoothed_loss
from fgrad.analysis.runs import MnistRun
from fgrad.analysis.tables import seconds

COLORS = {"forward": "#d62728", "backprop": "#1f77b4", "backprop_noise": "#2ca02c"}
MAX_POINTS = 2_000        # points per plotted line (longer series are subsampled evenly)
PANEL_SIZE = (4.0, 3.1)   # inches per panel
FORMATS = ("png", "pdf")
# Contour windows that show the paper's view; widened to hold every trajectory.
CONTOUR_BOX = {"beale": ((-0.5, 4.0), (-1.0, 1.5)), "rosenbrock": ((-1.5, 1.5), (-0.5, 1.5))}


def _thin(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` entries of ``n``, first and last kept: half evenly
    spread, half log-spaced, so the fast early iterations are drawn densely too (evenly thinned
    paths drew long chords where the iterate moves most per step)."""
    if n <= max_points:
        return np.arange(n)
    even = np.linspace(0, n - 1, max_points // 2)
    early = np.geomspace(1, n - 1, max_points - max_points // 2)
    return np.unique(np.concatenate([[0], even, early]).round().astype(np.int64))


def _stack(series: Sequence[np.ndarray]) -> np.ndarray:
    """Seeds' series as one (seeds, n) array, cut to the shortest."""
    n = min(len(s) for s in series)
    return np.stack([np.asarray(s[:n], np.float64) for s in series])


def band(ax: Axes, x: np.ndarray, ys: np.ndarray, method: str, label: str,
         color: str | None = None, marker: str | None = None, dashed: bool = False) -> None:
    """The one curve kind of every line panel: the mean over seeds (bold) and, with several
    seeds, each seed's own curve (thin, same colour); the legend gives the seed count.

    Args:
      ax: the panel.
      x: (n,) abscissae.
      ys: (seeds, n) values.
      method: picks the colour (unless ``color`` is given).
      label: legend entry.
      color: the curve's colour (default: the method's).
      marker: a marker at each point (for sparse series).
      dashed: draw the mean dashed and above the other curves, so it stays visible where it
        lies on another method's.
    """
    idx = _thin(len(x))
    x, ys = np.asarray(x)[idx], np.asarray(ys)[:, idx]
    color = color or COLORS[method]
    seeds = ys.shape[0]
    if seeds > 1:
        label = f"{label} (mean of {seeds} seeds)"
        for y in ys:
            ax.plot(x, y, color=color, lw=0.5, alpha=0.45)
    ax.plot(x, ys.mean(axis=0), color=color, lw=1.3, label=label, marker=marker, ms=3,
            ls="--" if dashed else "-", zorder=3 if dashed else 2)


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
    """Log y, unless the data vary by less than a factor 2 (a log scale there only looks like
    a linear one with odd ticks); within less than a decade, evenly spaced ticks read as plain
    numbers (2.25, not 2.25×10⁰)."""
    lo, hi = ax.dataLim.intervaly
    if lo > 0 and hi / lo < 2:
        return
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 10:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.yaxis.set_minor_formatter(NullFormatter())


def label_log_y(ax: Axes) -> None:
    """On a log y axis spanning under three decades, label 2× and 5× ticks as well, so the
    panel reads with more than one or two labelled values."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() != "log" or lo <= 0 or hi / lo >= 1000:
        return
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def share_y(axes: np.ndarray, columns: Sequence[int]) -> None:
    """One y range per column of a grid of panels (rows: learning rates), so a row whose
    model barely moved is drawn on the same scale as one that learned, not zoomed into its
    noise; a column goes back to linear when the shared range is under a factor 2."""
    if axes.shape[0] < 2:
        return
    for c in columns:
        col = axes[:, c]
        lo = min(ax.dataLim.intervaly[0] for ax in col)
        hi = max(ax.dataLim.intervaly[1] for ax in col)
        for ax in col:
            if ax.get_yscale() == "log" and not (lo > 0 and hi / lo >= 2):
                ax.set_yscale("linear")
            pad = 0.04 * (hi - lo) if ax.get_yscale() == "linear" else 0.0
            ax.set_ylim(lo - pad, hi + pad) if pad else ax.set_ylim(lo / 1.05, hi * 1.05)


def mark_times(ax: Axes, times: dict[str, float | None]) -> str:
    """Vertical dotted lines where each method first reaches a target; returns their values
    as text for the panel's title ("T_f = … s, T_b = … s", "not reached" for inf), so no
    legend can hide them."""
    parts = []
    for method, t in times.items():
        if t is None:
            continue
        if np.isfinite(t):
            ax.axvline(t, color=COLORS[method], ls=":", lw=1.2)
            parts.append(f"T_{method[0]} = {seconds(t)}")
        else:
            parts.append(f"T_{method[0]}: not reached")
    return ", ".join(parts)


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


def _contour_box(fn_name: str, trajectories: Iterable[np.ndarray]
                 ) -> tuple[tuple[float, float], tuple[float, float]]:
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


def legend_below(fig: Figure, ax: Axes, ncol: int) -> None:
    """One legend for the whole figure, under its panels (``ax``'s entries), in place of each
    panel's: no legend covers a curve. The figure grows to make room; panels keep their size."""
    handles, labels = ax.get_legend_handles_labels()
    for a in fig.axes:
        if a.get_legend() is not None:
            a.get_legend().remove()
    width, height = fig.get_size_inches()
    extra = 0.22 * -(-len(labels) // ncol) + 0.15
    fig.set_size_inches(width, height + extra)
    fig.subplots_adjust(bottom=(0.55 + extra) / (height + extra),
                        top=1 - 0.75 / (height + extra))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.01))


def save(fig: Figure, fig_dir: Path, name: str) -> list[Path]:
    """Saves ``fig_dir/name.png`` (150 dpi) and ``.pdf``; returns their paths."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = fig_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    return paths


_TAB10 = [to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
_TAB20 = [to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
# Backprop curves in blues; forward-gradient curves in tab10 (red first, blue and its light
# shade left out), then tab20's light shades.
PALETTES = {"backprop": [_TAB10[0], _TAB20[1], "#08306b", "#6baed6"],
            "forward": [_TAB10[3], *(_TAB10[i] for i in (1, 2, 4, 5, 6, 7, 8, 9)),
                        *(_TAB20[i] for i in (7, 3, 5, 9, 11, 13, 15, 17, 19))]}
Curves = dict[tuple[str, float], list[MnistRun]]  # (variant, η₀) → its seeds' runs


def curve_colors(curves: Sequence[tuple[Hashable, str]]) -> dict[Hashable, str]:
    """A colour per curve, given (key, method) pairs in legend order."""
    used: dict[str, int] = {}
    colors = {}
    for key, method in curves:
        family = method if method in PALETTES else "forward"  # others share forward's palette
        palette = PALETTES[family]
        colors[key] = palette[used.get(family, 0) % len(palette)]
        used[family] = used.get(family, 0) + 1
    return colors


def sweep_window(runs: Sequence[MnistRun]) -> int:
    """Smoothing window of a sweep's loss curves: :data:`SMOOTH_WINDOW` steps, cut to a tenth of
    the shortest run so that short runs still draw a curve."""
    return max(1, min(SMOOTH_WINDOW, min(len(r.loss) for r in runs) // 10))


def mnist_curves(runs: Sequence[MnistRun], window: int = SMOOTH_WINDOW
                 ) -> dict[str, np.ndarray]:
    """A method's seeds as arrays: smoothed loss with its steps and times, raw times, evals."""
    sm = [smoothed_loss(r, window) for r in runs]
    return {"steps": _stack([s[0] for s in sm])[0], "loss_time": _stack([s[1] for s in sm]),
            "loss": _stack([s[2] for s in sm]), "step": _stack([r.step for r in runs])[0],
            "time": _stack([r.time for r in runs]),
            "eval_time": _stack([r.eval_time for r in runs]),
            "acc": _stack([r.test_acc for r in runs])}


def drawn_dashed(variant: str) -> bool:
    """Projection variants are drawn dashed: at η₀·n/K their updates nearly equal the mean's
    of the same K, so a solid line would hide the mean's."""
    return "projection" in variant


def loss_panels(ax_iter: Axes, ax_time: Axes, curves: Curves, colors: dict[Hashable, str],
                tag: str = "") -> None:
    """Smoothed training loss vs iterations and vs wall time, one band per (variant, η₀)."""
    window = sweep_window([r for runs in curves.values() for r in runs])
    for (variant, lr), runs in curves.items():
        c = mnist_curves(runs, window)
        label, color = f"{variant}, η₀ = {lr:g}", colors[(variant, lr)]
        dashed = drawn_dashed(variant)
        band(ax_iter, c["steps"], c["loss"], runs[0].method, label, color, dashed=dashed)
        band(ax_time, c["loss_time"].mean(axis=0), c["loss"], runs[0].method, label, color,
             dashed=dashed)
    smooth = f"training loss (mean of {window} steps)"
    style_axes(ax_iter, "iteration", smooth, f"loss vs iterations{tag}", logy=True)
    style_axes(ax_time, "wall time (s)", smooth, f"loss vs time{tag}", logy=True)


def variant_curves(runs: Sequence[MnistRun]) -> Curves:
    """Runs by (variant, η₀), in variant then η₀ order; seeds in order."""
    return {(v, lr): [seeds[s] for s in sorted(seeds)]
            for v, by_lr in group_variants(runs).items() for lr, seeds in by_lr.items()}
