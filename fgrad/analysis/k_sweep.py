"""Multi-tangent forward gradients on the MLP (beyond the paper): one row per (variant, η₀) in
the report section; loss and logged cosine curves in the figure."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import (
    Stat,
    _ratio,
    backprop_ms,
    f_line,
    group_variants,
    shared_f_ms,
    variant_stats,
)
from fgrad.analysis.plotting import (
    Curves,
    _new_figure,
    _stack,
    band,
    curve_colors,
    drawn_dashed,
    loss_panels,
    mnist_curves,
    style_axes,
    sweep_window,
    variant_curves,
)
from fgrad.analysis.runs import Excluded, MnistRun, load_mnist_runs, run_setting
from fgrad.analysis.tables import (
    NA,
    excluded_lines,
    fmt,
    format_stat,
    markdown_table,
    setup_line,
)

# ----------------------------------------------------------------------------- section


def _k_sweep_row(variant: str, lr: float, seeds: dict[int, MnistRun], stats: dict) -> list[str]:
    run = next(iter(seeds.values()))
    cosine = "1 (exact)" if run.method == "backprop" else format_stat(stats["cosine"])
    return [variant, f"{lr:g}", str(len(seeds)), format_stat(stats["loss"]),
            format_stat(stats["acc"]), format_stat(stats["ms"]), format_stat(stats["R"]),
            format_stat(stats["vs_backprop"]), cosine]


def _k_sweep_sentence(table: Sequence[tuple[MnistRun, dict[str, Stat | None]]]) -> str:
    """How the cosine and step time of each (distribution, combine) change from its smallest
    to its largest K, beside √K (the theory's growth of the cosine for n ≫ K)."""
    by_kind: dict[tuple[str, str], dict[int, dict[str, Stat | None]]] = {}
    for run, stats in table:
        if run.method == "forward" and stats["cosine"] is not None:
            kind = (run_setting(run, "distribution", "normal"), run_setting(run, "combine", "mean"))
            by_kind.setdefault(kind, {})[int(run_setting(run, "num_tangents", 1))] = stats
    parts = []
    for (dist, combine), by_k in by_kind.items():
        if len(by_k) < 2:
            continue
        k_lo, k_hi = min(by_k), max(by_k)
        lo, hi = by_k[k_lo], by_k[k_hi]
        growth = {k: _ratio(hi[k].mean, lo[k].mean) if hi[k] and lo[k] else None
                  for k in ("cosine", "ms")}
        text = (f"{dist}/{combine}: from K = {k_lo} to K = {k_hi} the mean cosine grows "
                f"{fmt(growth['cosine'], missing=NA)}× "
                f"(√(K ratio) = {math.sqrt(k_hi / k_lo):.3g})")
        if growth["ms"] is not None:
            text += f" and the step time {growth['ms']:.3g}×"
        parts.append(text)
    return "**Summary.** " + "; ".join(parts) + "." if parts else ""


K_SWEEP_HEADER = ("variant", "η₀", "seeds", "final training loss", "final test accuracy",
                  "ms / step", "R = T(step) / T(f)", "T(step) / T(backprop step)",
                  "mean cos(estimate, ∇)")


def k_sweep_section(exp_dir: Path) -> list[str]:
    """Markdown body for the multi-tangent sweep: one row per variant and η₀."""
    runs, excluded = load_mnist_runs(exp_dir)
    if not runs and not excluded:
        return []
    if not runs:
        return ["No complete runs.", *excluded_lines(excluded)]
    bp_ms = backprop_ms(runs)
    shared = shared_f_ms(runs)
    f_ms = None if shared is None else shared.mean
    table = [(variant, lr, seeds, variant_stats(seeds, bp_ms, f_ms))
             for variant, by_lr in group_variants(runs).items() for lr, seeds in by_lr.items()]
    every = run_setting(runs[0], "diagnostics_every")
    logged = (f"Cosines with the exact minibatch gradient are logged every {every} steps, by a "
              "computation compiled apart from the timed step." if every else
              "No cosines were logged (`diagnostics_every` unset).")
    lines = [f"{setup_line(runs)} Backprop step time: the same seed's backprop run at the same "
             f"η₀ (else at any η₀). {logged} {f_line(runs)}", ""]
    lines += markdown_table(K_SWEEP_HEADER, [_k_sweep_row(*row) for row in table])
    sentence = _k_sweep_sentence([(next(iter(seeds.values())), stats)
                                  for _, _, seeds, stats in table])
    return lines + (["", sentence] if sentence else []) + excluded_lines(excluded)


# ----------------------------------------------------------------------------- figure


def _cosine_panel(ax: Axes, curves: Curves, colors: dict[Hashable, str]) -> None:
    """Logged cosine with the exact gradient vs step, for the curves that logged it."""
    for (variant, lr), runs in curves.items():
        logged = [r for r in runs if r.cosine.size]
        if logged:
            band(ax, _stack([r.diag_step for r in logged])[0],
                 _stack([r.cosine for r in logged]), runs[0].method,
                 f"{variant}, η₀ = {lr:g}", colors[(variant, lr)], marker="o",
                 dashed=drawn_dashed(variant))
    style_axes(ax, "iteration", "cos(estimate, exact gradient)",
               "cosine with the exact gradient\n(colours as in the loss panels)", logy=True)
    _drop_legend(ax)


def _drop_legend(ax: Axes) -> None:
    """Removes a panel's legend (its curves are named by the loss panels' legends, same
    colours), which would cover data spread over the whole panel."""
    if ax.get_legend() is not None:
        ax.get_legend().remove()


def _excess_panel(ax: Axes, curves: Curves, colors: dict[Hashable, str]) -> None:
    """Each forward variant's smoothed loss minus backprop's (same seeds; backprop at the same
    η₀, else at its smallest η₀), so runs whose losses overlap at the scale of the loss panel
    separate."""
    bp = {lr: runs for (v, lr), runs in curves.items() if runs[0].method == "backprop"}
    if not bp:
        return
    window = sweep_window([r for runs in curves.values() for r in runs])
    for (variant, lr), runs in curves.items():
        ref_lr = lr if lr in bp else min(bp)
        ref = {r.seed: r for r in bp[ref_lr]}
        pairs = [(r, ref[r.seed]) for r in runs if r.seed in ref and r.method != "backprop"]
        if not pairs:
            continue
        mine = mnist_curves([p[0] for p in pairs], window)
        base = mnist_curves([p[1] for p in pairs], window)
        n = min(mine["loss"].shape[1], base["loss"].shape[1])
        tag = "" if ref_lr == lr else f" (vs backprop at {ref_lr:g})"
        band(ax, mine["steps"][:n], mine["loss"][:, :n] - base["loss"][:, :n], runs[0].method,
             f"{variant}, η₀ = {lr:g}{tag}", colors[(variant, lr)], dashed=drawn_dashed(variant))
    ax.axhline(0.0, color="gray", lw=0.8, ls=":")
    style_axes(ax, "iteration", "training loss − backprop's (same seed)",
               "loss above backprop's\n(colours as in the loss panels)")
    _drop_legend(ax)


def plot_k_sweep(data: tuple[list[MnistRun], list[Excluded]], name: str) -> Figure | None:
    """Multi-tangent sweep: loss vs iterations, loss vs time, cosine vs iterations, one curve
    per (variant, η₀); runs left out are not drawn."""
    runs, _ = data
    if not runs:
        return None
    curves = variant_curves(runs)
    colors = curve_colors([(k, r[0].method) for k, r in curves.items()])
    fig, axes = _new_figure(1, 4)
    # a backprop run at a rate no forward-gradient variant uses (its own best rate) would set the
    # loss scale and flatten the others: it stays in the report's table, not in these panels
    shared = {lr for (variant, lr), rs in curves.items() if rs[0].method != "backprop"}
    apart = sorted(lr for (variant, lr), rs in curves.items()
                   if rs[0].method == "backprop" and lr not in shared)
    tag = (f" (backprop at η₀ = {', '.join(f'{lr:g}' for lr in apart)}: in the table)"
           if apart else "")
    loss_panels(axes[0, 0], axes[0, 1],
                {k: rs for k, rs in curves.items() if not (rs[0].method == "backprop"
                                                           and k[1] in apart)}, colors, tag)
    _excess_panel(axes[0, 2], curves, colors)
    _cosine_panel(axes[0, 3], curves, colors)
    fig.suptitle(f"{name}: K tangents per step, mean or projection (bold: mean over seeds, thin: "
                 "each seed)", fontsize=11)
    return fig


FAMILY = Family(section=k_sweep_section, load=load_mnist_runs, draw=plot_k_sweep)
