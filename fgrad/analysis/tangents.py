"""Tangent structures in training (``experiments/low_rank.py``): backprop, forward gradients with
i.i.d. and with low-rank tangents at one learning rate, all timed in one process. Report section:
a row per variant (loss, accuracy, step time, iterations and seconds to backprop's best loss,
T/T_b per seed), whether low-rank's loss is within the seed spread of i.i.d.'s; figure: loss vs
iterations and vs wall time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import (
    aggregate,
    best_loss,
    group_variants,
    step_ms,
    steps_to_reach,
    time_to_reach,
)
from fgrad.analysis.plotting import _new_figure, curve_colors, loss_panels, variant_curves
from fgrad.analysis.runs import MnistRun, load_mnist_runs
from fgrad.analysis.tables import excluded_lines, fmt, format_stat, markdown_table, setup_line

HEADER = ("variant", "tangents", "seeds", "final training loss", "final test accuracy",
          "ms per step (median)", "step / backprop's", "steps to backprop's best loss",
          "T / T_b per seed")


def _tangents(run: MnistRun) -> str:
    cfg = run.summary.get("config", {})
    if run.method != "forward":
        return "–"
    return (f"low rank (r = {cfg.get('rank', 1)})" if cfg.get("tangents") == "low_rank"
            else "i.i.d.")


def _by_variant(runs: list[MnistRun]) -> dict[str, dict[int, MnistRun]]:
    """Runs by variant then seed (one learning rate per variant: the first)."""
    return {v: next(iter(by_lr.values())) for v, by_lr in group_variants(runs).items()}


def rows(runs: list[MnistRun]) -> list[dict]:
    """Per variant: stats over seeds; T/T_b = seconds to backprop's best loss over backprop's
    own seconds to it, per seed (inf: not reached)."""
    by = _by_variant(runs)
    bp = by.get("backprop", {})
    bp_ms = aggregate(step_ms(r) for r in bp.values())
    out = []
    for variant, seeds in by.items():
        per_seed = {}
        for s, r in seeds.items():
            if s in bp:
                target = best_loss(bp[s])
                per_seed[s] = (steps_to_reach(r, target),
                               time_to_reach(r, target) / time_to_reach(bp[s], target))
        ms = aggregate(step_ms(r) for r in seeds.values())
        first = next(iter(seeds.values()))
        out.append({"variant": variant, "tangents": _tangents(first), "seeds": len(seeds),
                    "loss": aggregate(r.summary.get("final_train_loss") for r in seeds.values()),
                    "acc": aggregate((r.summary.get("final_eval") or {}).get("test_acc")
                                     for r in seeds.values()),
                    "ms": ms, "step_ratio": ms.mean / bp_ms.mean if ms and bp_ms else None,
                    "reach": per_seed, "losses": {s: r.summary.get("final_train_loss")
                                                  for s, r in seeds.items()}})
    return out


def _reach(per_seed: dict[int, tuple[float, float]]) -> tuple[str, str]:
    steps = [v[0] for v in per_seed.values()]
    hit = [s for s in steps if math.isfinite(s)]
    text = f"{np.mean(hit):,.0f}" if hit else "not reached"
    if hit and len(hit) < len(steps):
        text += f" ({len(steps) - len(hit)} seed(s) did not reach)"
    ratios = "; ".join(f"seed {s}: {fmt(v[1], '.3f') if math.isfinite(v[1]) else 'not reached'}"
                       for s, v in sorted(per_seed.items()))
    return text, ratios or "–"


def _within_spread(table: list[dict]) -> str:
    row = {r["variant"]: r for r in table}
    iid, low = row.get("forward"), next((r for r in table if r["tangents"].startswith("low")),
                                        None)
    if not iid or not low or not iid["loss"] or not low["loss"]:
        return ""
    a = [v for v in iid["losses"].values() if v is not None]
    b = [v for v in low["losses"].values() if v is not None]
    if len(a) < 2:
        return ("With one seed there is no spread to compare the low-rank and i.i.d. final "
                "losses against: not judged.")
    diff = float(np.mean(b) - np.mean(a))
    se = float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))) if len(b) > 1 \
        else float(np.std(a, ddof=1))
    z = abs(diff) / se if se > 0 else math.inf
    verdict = ("within the seed spread (|difference| < 2 standard errors)" if z < 2 else
               "outside the seed spread (|difference| ≥ 2 standard errors), "
               + ("lower" if diff < 0 else "higher"))
    return (f"Low-rank tangents end at training loss {format_stat(low['loss'])} against i.i.d. "
            f"tangents' {format_stat(iid['loss'])}: difference {diff:+.4f}, {z:.1f} standard "
            f"errors of the difference ({len(a)} and {len(b)} seeds): {verdict}. A low-rank "
            f"step costs {fmt(low['step_ratio'], '.3f')}× backprop's and an i.i.d. one "
            f"{fmt(iid['step_ratio'], '.3f')}× in this run.")


def section(exp_dir: Path) -> list[str]:
    """Markdown body: a row per variant and the low-rank vs i.i.d. comparison."""
    runs, excluded = load_mnist_runs(exp_dir)
    if not runs:
        return ["No complete runs.", *excluded_lines(excluded)] if excluded else []
    table = rows(runs)
    lines = [f"{setup_line(runs)} All runs were made one after another in one process on one "
             "machine, so their step times compare. Steps to backprop's best loss: the first "
             "step at which the training loss (mean of 100 steps) falls to the lowest value "
             "backprop's reaches, same seed; T / T_b: the seconds that takes over backprop's "
             "own seconds to it (1 for backprop).", ""]
    body = []
    for r in table:
        reach, ratios = _reach(r["reach"])
        body.append([r["variant"], r["tangents"], str(r["seeds"]), format_stat(r["loss"]),
                     format_stat(r["acc"]), format_stat(r["ms"]), fmt(r["step_ratio"], ".3f"),
                     reach, ratios])
    lines += markdown_table(HEADER, body)
    sentence = _within_spread(table)
    return lines + (["", sentence] if sentence else []) + excluded_lines(excluded)


def draw(data: tuple[list[MnistRun], list], name: str) -> Figure | None:
    """Loss vs iterations and vs wall time, a band per variant."""
    runs, _ = data
    if not runs:
        return None
    curves = variant_curves(runs)
    fig, axes = _new_figure(1, 2)
    colors = curve_colors([(k, v[0].method) for k, v in curves.items()])
    loss_panels(axes[0, 0], axes[0, 1], curves, colors)
    for ax in axes[0]:  # losses fall from the top left: the top right is free
        ax.legend(fontsize=6.5, loc="upper right", framealpha=0.7)
    fig.suptitle(f"{name}: i.i.d. vs low-rank tangents against backprop (mean over seeds, thin: "
                 "each seed)", fontsize=11)
    return fig


FAMILY = Family(section=section, load=load_mnist_runs, draw=draw)
