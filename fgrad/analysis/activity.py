"""Activity perturbation and local losses against backprop and weight perturbation, each at its own
best learning rate (``experiments/activity.py``). Report section: the sweep, then a row per
method at its best η₀ (test error, gap to backprop, step time and memory) and Ren et al.'s
target (activity-perturbed test error ≤ backprop's + 0.5 points); figure: test error vs epoch
and vs wall time at the best rates."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import aggregate, best_rates, group_variants, run_metrics, step_ms
from fgrad.analysis.plotting import (
    _new_figure,
    _stack,
    band,
    curve_colors,
    label_log_y,
    style_axes,
)
from fgrad.analysis.runs import Excluded, MnistRun, load_mnist_runs
from fgrad.analysis.tables import excluded_lines, fmt, format_stat, markdown_table, setup_line

TRAIN_EXAMPLES = 60_000
TARGET_POINTS = 0.5  # Ren et al.'s gap was 0.58 points; the issue's bar: ≤ backprop + 0.5
LABELS = {"backprop": "backprop", "backprop_local": "local greedy backprop (local losses)",
          "forward": "weight perturbation (the paper's forward gradient)",
          "activity": "activity perturbation",
          "activity_local": "activity perturbation + local losses"}
SWEEP_HEADER = ("variant", "η₀", "final training loss", "final test error (%)", "runs",
                "best η₀")
BEST_HEADER = ("method", "best η₀", "seeds", "final test error (%)", "vs backprop (points)",
               "ms per step (median)", "step / backprop's", "step memory (MiB)")


def _error(run: MnistRun) -> float | None:
    acc = (run.summary.get("final_eval") or {}).get("test_acc")
    return None if acc is None else 100.0 * (1.0 - float(acc))


def _sweep_rows(runs: list[MnistRun], excluded: list[Excluded], best: dict[str, float]
                ) -> list[list[str]]:
    sweep_seeds = {int(s) for r in runs for s in r.summary.get("config", {}).get("seeds", [])}
    out = []
    for variant, by_lr in group_variants(runs).items():
        for lr, seeds in by_lr.items():
            rs = [r for s, r in seeds.items() if not sweep_seeds or s in sweep_seeds]
            if not rs:
                continue
            out.append([variant, f"{lr:g}",
                        format_stat(aggregate(r.summary.get("final_train_loss") for r in rs)),
                        format_stat(aggregate(_error(r) for r in rs)), "complete",
                        "best" if best.get(variant) == lr else ""])
    for e in excluded:
        s = e.summary
        out.append([str(s.get("variant", s.get("method"))), f"{float(s['learning_rate']):g}",
                    "n/a", "n/a", f"seed {s.get('seed')} {e.status} at step {e.steps_done}", ""])
    return out


def best_rows(runs: list[MnistRun], best: dict[str, float]) -> list[dict]:
    """Per variant at its best η₀ (``best``: :func:`best_rates`): test error, step time,
    memory."""
    groups = group_variants(runs)
    at_best = {v: groups[v][lr] for v, lr in best.items()}
    bp = at_best.get("backprop", {})
    bp_err = aggregate(_error(r) for r in bp.values())
    bp_ms = aggregate(step_ms(r) for r in bp.values())
    out = []
    for variant, seeds in at_best.items():
        err = aggregate(_error(r) for r in seeds.values())
        ms = aggregate(step_ms(r) for r in seeds.values())
        out.append({"variant": variant, "lr": best[variant], "seeds": len(seeds), "err": err,
                    "gap": err.mean - bp_err.mean if err and bp_err else None, "ms": ms,
                    "step_ratio": ms.mean / bp_ms.mean if ms and bp_ms else None,
                    "mem": aggregate(run_metrics(r)["mem"] for r in seeds.values())})
    return out


def _target_sentence(table: list[dict]) -> str:
    row = {r["variant"]: r for r in table}
    if "backprop" not in row or "activity" not in row or row["activity"]["gap"] is None:
        return ""
    parts = []
    for v in ("activity", "activity_local", "forward", "backprop_local"):
        if v in row and row[v]["gap"] is not None:
            parts.append(f"{LABELS[v]} {format_stat(row[v]['err'])} % ({row[v]['gap']:+.2f} "
                         f"points, {row[v]['seeds']} seed(s))")
    gap = row["activity"]["gap"]
    verdict = ("met" if gap <= TARGET_POINTS else f"missed by {gap - TARGET_POINTS:.2f} points")
    few = min(r["seeds"] for r in table) < 3
    return (f"**Summary.** Final test error at each method's best η₀: backprop "
            f"{format_stat(row['backprop']['err'])} %; " + "; ".join(parts) +
            f". Target (activity perturbation within {TARGET_POINTS} points of backprop, Ren et "
            f"al.'s gap 0.58): {verdict}." +
            (" With two seeds per method the gaps are indicative, not decisive." if few else ""))


def section(exp_dir: Path) -> list[str]:
    """Markdown body: the sweep, the best-rate comparison, the target."""
    runs, excluded = load_mnist_runs(exp_dir)
    if not runs:
        return ["No complete runs.", *excluded_lines(excluded)] if excluded else []
    best = best_rates(runs, excluded)
    epochs = max(int(r.summary["steps"]) for r in runs) * int(
        runs[0].summary.get("config", {}).get("batch_size", 64)) / TRAIN_EXAMPLES
    lines = [f"{setup_line(runs)} {epochs:.2f} epochs. Best η₀ of a method: the lowest final "
             "training loss (mean of the last 100 steps) of the sweep's seeds; the test set is "
             "not used to choose. For local-loss methods the training loss is the sum of the "
             "blocks' losses. Step memory: XLA's peak estimate for one compiled step beyond the "
             "on-device training set. All runs made one after another on one machine.", "",
             "**Sweep**", ""]
    lines += markdown_table(SWEEP_HEADER, _sweep_rows(runs, excluded, best))
    table = best_rows(runs, best)
    lines += ["", "**Each method at its best η₀**", ""]
    lines += markdown_table(BEST_HEADER, [
        [LABELS.get(r["variant"], r["variant"]), f"{r['lr']:g}", str(r["seeds"]),
         format_stat(r["err"]), fmt(r["gap"], "+.2f"), format_stat(r["ms"]),
         fmt(r["step_ratio"], ".3f"), format_stat(r["mem"])] for r in table])
    sentence = _target_sentence(table)
    edge = _edge_sentence(runs, best)
    return (lines + (["", sentence] if sentence else []) + (["", edge] if edge else [])
            + excluded_lines(excluded))


def _edge_sentence(runs: list[MnistRun], best: dict[str, float]) -> str:
    """Names the methods whose best η₀ is the sweep's largest or smallest rate (the optimum may
    lie outside the sweep), or '' if none."""
    groups = group_variants(runs)
    edge = [f"{v} (η₀ = {lr:g}, sweep {min(groups[v]):g}–{max(groups[v]):g})"
            for v, lr in best.items() if len(groups[v]) > 1 and lr in (min(groups[v]),
                                                                        max(groups[v]))]
    return ("**Sweep edges.** Best η₀ at an edge of the sweep, so a better rate may lie outside "
            "it: " + "; ".join(edge) + ".") if edge else ""


def draw(data: tuple[list[MnistRun], list[Excluded]], name: str) -> Figure | None:
    """Test error vs epoch and vs wall time, each method at its best η₀ (a band over seeds)."""
    runs, excluded = data
    if not runs:
        return None
    best, groups = best_rates(runs, excluded), group_variants(runs)
    fig, axes = _new_figure(1, 2)
    keys = [(v, groups[v][lr]) for v, lr in best.items()]
    colors = curve_colors([(v, next(iter(s.values())).method) for v, s in keys])
    for variant, seeds in keys:
        rs = [seeds[s] for s in sorted(seeds)]
        batch = int(rs[0].summary.get("config", {}).get("batch_size", 64))
        err = 100.0 * (1.0 - _stack([r.test_acc for r in rs]))
        label = f"{LABELS.get(variant, variant)}, η₀ = {best[variant]:g}"
        band(axes[0, 0], rs[0].eval_step * batch / TRAIN_EXAMPLES, err, rs[0].method, label,
             colors[variant], marker="o")
        band(axes[0, 1], _stack([r.eval_time for r in rs]).mean(axis=0), err, rs[0].method,
             label, colors[variant], marker="o")
    for ax, x in ((axes[0, 0], "epoch"), (axes[0, 1], "wall time (s)")):
        ax.set_yscale("log")
        style_axes(ax, x, "test error (%)", f"test error vs {x.split(' (')[0]}")
        label_log_y(ax)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes[0]:
        ax.get_legend().remove()
    width, height = fig.get_size_inches()  # the legend goes below the panels, covering no data
    fig.set_size_inches(width, height + 1.0)
    fig.subplots_adjust(bottom=(0.55 + 1.0) / (height + 1.0), top=1 - 0.75 / (height + 1.0))
    fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=7, frameon=False)
    fig.suptitle(f"{name}: each method at its best η₀ (mean over seeds, thin: each seed)",
                 fontsize=11)
    return fig


FAMILY = Family(section=section, load=load_mnist_runs, draw=draw)
