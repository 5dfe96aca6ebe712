"""The per-iteration control (``experiments/mlp_control.py``): forward gradient, backprop and
backprop plus noise of the forward gradient's covariance at one learning rate, with the weight
norm ‖θ‖ logged at every evaluation. Report section: a row per method; figure: loss, test
accuracy and ‖θ‖ against iterations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import (
    METHOD_LABELS,
    SMOOTH_WINDOW,
    aggregate,
    smoothed_loss,
    steps_to_reach,
)
from fgrad.analysis.plotting import _new_figure, _stack, band, legend_below, style_axes
from fgrad.analysis.runs import MnistRun, load_mnist_runs
from fgrad.analysis.tables import excluded_lines, fmt, format_stat, markdown_table, setup_line

ORDER = ("backprop", "forward", "backprop_noise")


def _by_method(runs: list[MnistRun]) -> dict[str, dict[int, MnistRun]]:
    out: dict[str, dict[int, MnistRun]] = {}
    for r in runs:
        out.setdefault(r.method, {})[r.seed] = r
    return {m: out[m] for m in sorted(out, key=lambda m: (ORDER + (m,)).index(m))}


def _norm(run: MnistRun, i: int) -> float | None:
    v = run.param_norm[i] if run.param_norm.size else math.nan
    return None if not math.isfinite(v) else float(v)


def rows(runs: list[MnistRun]) -> list[dict]:
    """Per method: seeds, final loss and accuracy, steps to backprop's best loss, ‖θ‖."""
    by = _by_method(runs)
    bp = by.get("backprop", {})
    out = []
    for method, seeds in by.items():
        reach = [steps_to_reach(r, float(np.min(smoothed_loss(bp[s])[2])))
                 for s, r in seeds.items() if s in bp]
        out.append({"method": method, "seeds": len(seeds),
                    "loss": aggregate(r.summary.get("final_train_loss") for r in seeds.values()),
                    "acc": aggregate((r.summary.get("final_eval") or {}).get("test_acc")
                                     for r in seeds.values()),
                    "reach": aggregate(reach), "norm0": aggregate(_norm(r, 0)
                                                                  for r in seeds.values()),
                    "norm": aggregate(_norm(r, -1) for r in seeds.values())})
    return out


def format_steps(stat) -> str:
    """Steps to target: whole numbers, mean ± std over seeds (the mean alone for one seed)."""
    if stat is None or stat.n == 0:
        return format_stat(stat)
    text = f"{stat.mean:,.0f}" if stat.n == 1 else f"{stat.mean:,.0f} ± {stat.std:,.0f}"
    return text + (f" (not reached in {stat.missed} seed(s))" if stat.missed else "")


HEADER = ("method", "seeds", "final training loss", "final test accuracy",
          "steps to backprop's best loss", "‖θ‖ at step 0", "‖θ‖ at the end")


def b_steps(b: dict) -> float:
    """The iteration at which backprop itself first reaches its best loss (mean over seeds)."""
    return b["reach"].mean if b["reach"] and b["reach"].n else math.inf


def _sentence(table: list[dict]) -> str:
    row = {r["method"]: r for r in table}
    if not {"forward", "backprop"} <= set(row):
        return ""
    f, b = row["forward"], row["backprop"]
    text = (f"**Summary.** Forward gradient ends at training loss {format_stat(f['loss'])} "
            f"against backprop's {format_stat(b['loss'])} at the same η₀, and reaches "
            f"backprop's best loss at step {format_steps(f['reach'])}")
    if "backprop_noise" in row:
        n = row["backprop_noise"]
        text += (f"; backprop plus noise of the forward gradient's covariance ends at "
                 f"{format_stat(n['loss'])} (reaching backprop's best at step "
                 f"{format_steps(n['reach'])})")
    if f["norm"] and b["norm"]:
        text += (f". The weight norm goes from {fmt(b['norm0'].mean if b['norm0'] else None)} "
                 f"to {fmt(f['norm'].mean)} under forward gradients and to "
                 f"{fmt(b['norm'].mean)} under backprop")
        if "backprop_noise" in row and row["backprop_noise"]["norm"]:
            text += f" ({fmt(row['backprop_noise']['norm'].mean)} with the noise)"
    text += "."
    n = row.get("backprop_noise")
    if n and f["reach"] and n["reach"] and f["reach"].n and n["reach"].n:
        total = max(f["reach"].n + f["reach"].missed, 1)
        gain_f, gain_n = 1 - f["reach"].mean / b_steps(b), 1 - n["reach"].mean / b_steps(b)
        if gain_f > 0 and gain_n > 0:
            text += (f" Both noisy methods need fewer iterations than backprop to reach its best "
                     f"loss ({100 * gain_f:.0f} % fewer with forward gradients, "
                     f"{100 * gain_n:.0f} % with the noise): the per-iteration gain comes with "
                     "the forward gradient's noise and is not specific to forward-mode "
                     f"estimates ({total} seed(s): the direction, not the size).")
    return text


def section(exp_dir: Path) -> list[str]:
    """Markdown body: a row per method, and what the control says."""
    runs, excluded = load_mnist_runs(exp_dir)
    if not runs:
        return ["No complete runs.", *excluded_lines(excluded)] if excluded else []
    table = rows(runs)
    lines = [f"{setup_line(runs)} Backprop plus noise adds ξ = ‖∇f‖ z + s ∇f (z ~ N(0, I), "
             "s ~ N(0, 1)) to the exact gradient: the same mean and covariance (‖∇f‖² I + "
             "∇f∇fᵀ) as the forward gradient with one normal tangent, but noise independent of "
             "the estimate's direction. Steps to backprop's best loss: the first step at which "
             f"the method's training loss (mean of {SMOOTH_WINDOW} steps) falls to the lowest "
             "value backprop's reaches, same seed.", ""]
    lines += markdown_table(HEADER, [[METHOD_LABELS.get(r["method"], r["method"]),
                                      str(r["seeds"]), format_stat(r["loss"]),
                                      format_stat(r["acc"]), format_steps(r["reach"]),
                                      format_stat(r["norm0"]), format_stat(r["norm"])]
                                     for r in table])
    sentence = _sentence(table)
    return lines + (["", sentence] if sentence else []) + excluded_lines(excluded)


def draw(data: tuple[list[MnistRun], list], name: str) -> Figure | None:
    """Loss, test accuracy and ‖θ‖ against iterations, a band per method."""
    runs, _ = data
    if not runs:
        return None
    fig, axes = _new_figure(1, 3)
    for method, seeds in _by_method(runs).items():
        rs = [seeds[s] for s in sorted(seeds)]
        label = METHOD_LABELS.get(method, method)  # band adds the seed count
        sm = [smoothed_loss(r) for r in rs]
        dashed = method == "forward"  # visible where it lies on backprop + noise
        band(axes[0, 0], sm[0][0], _stack([s[2] for s in sm]), method, label, dashed=dashed)
        band(axes[0, 1], rs[0].eval_step, _stack([r.test_acc for r in rs]), method, label,
             marker="o", dashed=dashed)
        if all(np.isfinite(r.param_norm).all() and r.param_norm.size for r in rs):
            band(axes[0, 2], rs[0].eval_step, _stack([r.param_norm for r in rs]), method,
                 label, marker="o", dashed=dashed)
    style_axes(axes[0, 0], "iteration", f"training loss (mean of {SMOOTH_WINDOW} steps)",
               "loss vs iterations", logy=True)
    style_axes(axes[0, 1], "iteration", "test accuracy", "test accuracy")
    style_axes(axes[0, 2], "iteration", "‖θ‖ (all parameters)", "weight norm")
    legend_below(fig, axes[0, 0], ncol=3)
    fig.suptitle(f"{name}: forward gradient, backprop, and backprop plus noise of the same "
                 "covariance (mean over seeds, thin: each seed)", fontsize=11)
    return fig


FAMILY = Family(section=section, load=load_mnist_runs, draw=draw)
