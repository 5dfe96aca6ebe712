"""Learning-rate sweep per method on the MLP (beyond the paper): every (variant, η₀), the best
η₀ per variant, and forward gradient vs backprop at their own best and at a shared η₀ in the
report section; final loss vs η₀ and the curves at the best η₀ in the figure."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import (
    METHOD_LABELS,
    METHODS,
    SweepKey,
    SweepPoint,
    best_rates,
    group_variants,
    sweep_points,
)
from fgrad.analysis.plotting import (
    _new_figure,
    curve_colors,
    loss_panels,
    style_axes,
    variant_curves,
)
from fgrad.analysis.runs import Excluded, MnistRun, load_mnist_runs, run_variant
from fgrad.analysis.tables import format_stat, markdown_table, setup_line

# ----------------------------------------------------------------------------- section


def _failure(e: Excluded) -> str:
    seed = e.summary.get("seed", "?")
    if e.status == "diverged":
        return f"seed {seed} diverged at step {e.diverged_step}"
    return f"seed {seed} {e.status} at step {e.steps_done} of {e.steps}"


def _sweep_row(p: SweepPoint) -> list[str]:
    status = "; ".join(_failure(e) for e in p.failed) or "complete"
    return [p.variant, p.optimizer, f"{p.lr:g}", format_stat(p.stats.get("loss")),
            format_stat(p.stats.get("acc")), status]


def _edge_note(p: SweepPoint, grid: Sequence[float]) -> str:
    if len(grid) > 1 and p.lr == max(grid):
        return "largest η₀ tried: a larger one may do better"
    if len(grid) > 1 and p.lr == min(grid):
        return "smallest η₀ tried: a smaller one may do better"
    return ""


def _best_rows(points: dict[SweepKey, SweepPoint], best: dict[str, float]) -> list[list[str]]:
    rows = []
    for variant, lr in best.items():
        p = points[(variant, lr)]
        grid = [k[1] for k in points if k[0] == variant]
        rows.append([variant, METHOD_LABELS.get(p.method, p.method), p.optimizer, f"{lr:g}",
                     format_stat(p.stats.get("loss")), format_stat(p.stats.get("acc")),
                     _edge_note(p, grid)])
    return rows


def _loss(p: SweepPoint) -> float:
    return p.stats["loss"].mean


def _best_of(points: Iterable[SweepPoint]) -> SweepPoint | None:
    usable = [p for p in points if p.usable]
    return min(usable, key=_loss) if usable else None


def _shared_point(fwd: Sequence[SweepPoint], bp: Sequence[SweepPoint]
                  ) -> tuple[SweepPoint, SweepPoint] | None:
    """(forward, backprop) at the η₀ in both grids (both complete) with the lowest mean of
    their two losses."""
    pairs = [(f, b) for f in fwd for b in bp if f.usable and b.usable and f.lr == b.lr]
    return min(pairs, key=lambda fb: _loss(fb[0]) + _loss(fb[1])) if pairs else None


def _protocol_sentence(optimizer: str, fwd: Sequence[SweepPoint], bp: Sequence[SweepPoint]
                       ) -> str:
    """Forward gradient vs backprop with one optimizer: each at its own best η₀, and at a
    shared η₀ (the paper's protocol)."""
    bf, bb = _best_of(fwd), _best_of(bp)
    if bf is None or bb is None:
        return f"With {optimizer}, a method has no complete η₀, so they cannot be compared."
    best_ratio = _loss(bf) / _loss(bb)
    text = (f"With {optimizer}, each at its own best η₀, forward gradient ends at a training "
            f"loss of {_loss(bf):.4g} (η₀ = {bf.lr:g}) and backprop at {_loss(bb):.4g} "
            f"(η₀ = {bb.lr:g}): a forward / backprop loss ratio of {best_ratio:.3g}. ")
    shared = _shared_point(fwd, bp)
    if shared is None:
        return text + ("No η₀ is in both grids, so the paper's shared-rate protocol (one η₀ for "
                       "both methods) cannot be evaluated here.")
    sf, sb = shared
    shared_ratio = _loss(sf) / _loss(sb)
    text += (f"Under the paper's protocol, one η₀ for both methods (here η₀ = {sf.lr:g}: of the "
             "rates in both grids, the one with the lowest mean of the two losses), the losses "
             f"are {_loss(sf):.4g} and {_loss(sb):.4g}, a ratio of {shared_ratio:.3g}: ")
    if math.isclose(shared_ratio, best_ratio, rel_tol=1e-9):
        return text + "the shared rate is each method's best, so both protocols agree."
    if shared_ratio < best_ratio:
        return text + ("the shared rate makes forward gradient look closer to backprop than "
                       "when each method is tuned, so it understates backprop's advantage.")
    return text + ("the shared rate makes forward gradient look worse relative to backprop than "
                   "when each method is tuned, so it understates forward gradient.")


def _sweep_summary(points: dict[SweepKey, SweepPoint]) -> str:
    optimizers = sorted({p.optimizer for p in points.values()}, key=lambda o: (o != "sgd", o))
    sentences = []
    for opt in optimizers:
        by_method = {m: [p for p in points.values() if p.optimizer == opt and p.method == m]
                     for m in METHODS}
        if all(by_method.values()):
            sentences.append(_protocol_sentence(opt, by_method["forward"],
                                                by_method["backprop"]))
    return "**Summary.** " + " ".join(sentences) if sentences else ""


SWEEP_HEADER = ("variant", "optimizer", "η₀", "final training loss", "final test accuracy",
                "runs")
BEST_HEADER = ("variant", "method", "optimizer", "best η₀", "final training loss",
               "final test accuracy", "note")


def lr_sweep_section(exp_dir: Path) -> list[str]:
    """Markdown body for the learning-rate sweep: every (variant, η₀) with diverged runs shown,
    the best η₀ per variant, and forward gradient vs backprop at their best and shared rates."""
    runs, excluded = load_mnist_runs(exp_dir)
    if not runs and not excluded:
        return []
    points = sweep_points(runs, excluded)
    lines = [(setup_line(runs) + " " if runs else "") + "Runs that diverged or did not finish "
             "are shown where they stopped and left out of the means; an η₀ with such a run "
             "cannot be a best η₀. Best η₀: the lowest mean final training loss (mean of the "
             "last 100 steps).", ""]
    lines += markdown_table(SWEEP_HEADER, [_sweep_row(p) for p in points.values()])
    best = best_rates(runs, excluded)
    lines += ["", "**Best η₀ per variant**", ""]
    lines += markdown_table(BEST_HEADER, _best_rows(points, best))
    summary = _sweep_summary(points)
    return lines + (["", summary] if summary else [])


# ----------------------------------------------------------------------------- figure


def _final_loss_panel(ax: Axes, runs: Sequence[MnistRun], excluded: Sequence[Excluded],
                      colors: dict[Hashable, str], best: dict[str, float]) -> None:
    """Final training loss vs η₀ per variant (mean; ticks: each seed's); diverged or unfinished
    runs as crosses at the top; each variant's best η₀ circled."""
    for variant, by_lr in group_variants(runs).items():
        loss = {lr: np.array([r.summary["final_train_loss"] for r in seeds.values()], float)
                for lr, seeds in by_lr.items()}
        mean = {lr: v.mean() for lr, v in loss.items()}
        seeds = max(len(v) for v in loss.values())
        ax.plot(list(loss), list(mean.values()), color=colors[variant], marker="o", ms=3,
                lw=1.2, label=variant if seeds == 1 else f"{variant} (mean of ≤ {seeds} seeds)")
        if seeds > 1:  # each seed's own value
            for lr, v in loss.items():
                ax.plot([lr] * len(v), v, "_", color=colors[variant], ms=6, alpha=0.7)
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
    curves = {(v, lr): runs for (v, lr), runs in variant_curves(runs).items()
              if best.get(v) == lr}
    fig, axes = _new_figure(1, 3)
    _final_loss_panel(axes[0, 0], runs, excluded, colors, best)
    loss_panels(axes[0, 1], axes[0, 2], curves, {k: colors[k[0]] for k in curves},
                " (best η₀)")
    fig.suptitle(f"{name}: learning-rate sweep per method and optimizer (mean over seeds; "
                 "thin lines / ticks: each seed)", fontsize=11)
    return fig


FAMILY = Family(section=lr_sweep_section, load=load_mnist_runs, draw=plot_lr_sweep)
