"""MNIST experiments (logistic regression, MLP, CNN): the report section and the figure.

The section has one table per learning rate η₀ with the paper's metrics (see
:mod:`fgrad.analysis.metrics`) beside its published values, and a generated summary; the figure
one row of panels per η₀.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import (
    METHOD_LABELS,
    METHODS,
    SMOOTH_WINDOW,
    UNEVEN,
    Stat,
    f_line,
    group_runs,
    lr_stats,
    seed_metrics,
    shared_f_ms,
)
from fgrad.analysis.plotting import (
    _new_figure,
    band,
    mark_times,
    mnist_curves,
    share_y,
    style_axes,
)
from fgrad.analysis.runs import MnistRun, load_mnist_runs
from fgrad.analysis.tables import (
    excluded_lines,
    format_stat,
    markdown_table,
    seconds,
    setup_line,
)

# The paper's published numbers (read off its figures), by experiment and learning rate η₀
# (None: any rate). Keys are metric names of :data:`MNIST_ROWS`.
PAPER: dict[str, dict[float | None, dict[str, float]]] = {
    "logreg": {None: {"T_f": 197.3, "T_b": 356.8, "T_f/T_b": 0.553}},
    "mlp": {
        2e-5: {"T_f": 165.8, "T_b": 292.4, "T_f/T_b": 0.567, "R_f": 2.329, "R_b": 3.971,
               "R_f/R_b": 0.586},
        2e-4: {"T_f": 68.0, "T_b": 297.0, "T_f/T_b": 0.229, "R_f": 2.607, "R_b": 4.359,
               "R_f/R_b": 0.598},
    },
}

# Where each experiment's paper values come from. The paper's runs are PyTorch on a GPU (its
# model is not in the sources this project could check, so it is not named here).
PAPER_SOURCE = {
    "logreg": "the annotation of the paper's logistic-regression figure (its GPU)",
    "mlp": ("T_f, T_b and T_f/T_b: the annotations of the paper's MLP figures at η₀ = 2e-5 "
            "and 2e-4 (its GPU); R_f and R_b: as recorded in this project's first reading of "
            "the paper, not re-checked against its text since"),
    "cnn": "none: the paper's CNN numbers are not in the sources this project could check",
}

# ----------------------------------------------------------------------------- section


def _mnist_rows(window: int) -> list[tuple[str, str]]:
    """(metric key, row label) of an MNIST learning-rate table."""
    rows = [("f_ms", "T(f): loss on one batch, ms (one for the section: median ± std over runs)"),
            ("ms_forward", "forward-gradient step, ms"),
            ("ms_backprop", "backprop step, ms"),
            ("R_f", "R_f = T(fwd-grad step) / T(f)"),
            ("R_b", "R_b = T(backprop step) / T(f)"),
            ("R_f/R_b", "R_f / R_b"),
            ("target", f"backprop's best training loss (running mean of {window} steps)"),
            ("T_f", "T_f: wall time for forward gradient to reach it, s"),
            ("T_b", "T_b: wall time for backprop to reach it, s"),
            ("T_f/T_b", "T_f / T_b"),
            ("step_f/step_b", "iterations to reach it, forward gradient ÷ backprop "
                              "(hardware-independent; paper: its T_f/T_b ÷ R_f/R_b)")]
    for key, label in (("loss", "final training loss (mean of last 100 steps)"),
                       ("acc", "final test accuracy"),
                       ("mem", "memory of one step beyond the training set (XLA estimate), MiB"),
                       ("dev", "device allocator peak, MiB")):
        rows += [(f"{key}_{m}", f"{label}, {METHOD_LABELS[m]}") for m in METHODS]
    return rows


MNIST_ROWS = _mnist_rows(SMOOTH_WINDOW)


def paper_values(experiment: str, learning_rate: float) -> dict[str, float]:
    """The paper's published metrics for this experiment and η₀ (empty where it has none),
    with the per-iteration ratio they imply where it gives both T_f/T_b and R_f/R_b:
    T_f/T_b = (steps_f · step time_f) / (steps_b · step time_b), so steps_f/steps_b =
    (T_f/T_b) / (R_f/R_b)."""
    by_lr = PAPER.get(experiment, {})
    for lr, values in by_lr.items():
        if lr is None or math.isclose(lr, learning_rate, rel_tol=1e-6):
            out = dict(values)
            if "T_f/T_b" in out and "R_f/R_b" in out:
                out["step_f/step_b"] = round(out["T_f/T_b"] / out["R_f/R_b"], 3)
            return out
    return {}


def _lr_table(stats: dict[str, Stat | None], paper: dict[str, float]) -> list[str]:
    rows = [[label, format_stat(stats.get(key)), f"{paper[key]:g}" if key in paper else ""]
            for key, label in MNIST_ROWS
            if stats.get(key) is not None or key in paper]
    return markdown_table(["quantity", "this reproduction, mean ± std", "paper"], rows)


def _direction(measured: float, paper: float | None) -> str:
    """A ratio's published value and whether both lie on the same side of 1 ("" if none)."""
    if paper is None:
        return ""
    side = "same side of 1" if (measured < 1) == (paper < 1) else "opposite side of 1"
    return f"; paper: {paper:g}, {side}"


def flagged(stats: dict[str, Stat | None], key: str) -> bool:
    """Whether some seed's pair has a 0/1 flag of :func:`~fgrad.analysis.metrics.seed_metrics`
    set: ``cross_machine`` (its runs ran on different machines) or ``uneven`` (its wall times
    include a shared machine's slowdowns, :data:`~fgrad.analysis.metrics.UNEVEN`)."""
    flag = stats.get(key)
    return flag is not None and flag.mean > 0


def _speed_sentence(stats: dict[str, Stat | None], paper: dict[str, float]) -> str:
    rf, rb, ratio = stats.get("R_f"), stats.get("R_b"), stats.get("R_f/R_b")
    if rf is not None and rb is not None and ratio is None and flagged(stats, "cross_machine"):
        return (f"R_f = {rf.mean:.3g} and R_b = {rb.mean:.3g}, each against T(f) on its own "
                "machine; the step costs of the two methods are not compared (different "
                "machines; the benchmark compares them in one run).")
    if rf is None or rb is None or ratio is None:
        return "Per-step cost ratios are not available (T(f) or a method's runs missing)."
    published = (f" (paper: {paper['R_f']:g} and {paper['R_b']:g})"
                 if "R_f" in paper and "R_b" in paper else "")
    cheaper = "cheaper" if ratio.mean < 1 else "NOT cheaper"
    return (f"A forward-gradient step cost R_f = {rf.mean:.3g} loss evaluations and a backprop "
            f"step R_b = {rb.mean:.3g}{published}: forward-gradient steps were {cheaper} than "
            f"backprop steps (R_f/R_b = {ratio.mean:.3g}"
            f"{_direction(ratio.mean, paper.get('R_f/R_b'))}).")


def _time_sentence(stats: dict[str, Stat | None], paper: dict[str, float], steps: int,
                   window: int) -> str:
    tf, tb, ratio, target = (stats.get(k) for k in ("T_f", "T_b", "T_f/T_b", "target"))
    per_step = stats.get("step_f/step_b")
    cross = flagged(stats, "cross_machine")
    if ratio is None and target is not None and per_step is not None and cross:
        total = per_step.n + per_step.missed
        reach = (f"reached it after {per_step.mean:.3g}× backprop's iterations in "
                 f"{per_step.n} of {total} seed(s)" if per_step.n else
                 f"did not reach it in any of {total} seed(s)")
        return (f"forward gradient and backprop ran on different machines, so T_f/T_b is not "
                f"measured (not judged); per iteration, forward gradient {reach} (backprop's "
                f"best training loss {target.mean:.4g}, running mean of {window} steps).")
    if tf is None or tb is None or ratio is None or target is None:
        return "No seed has complete runs of both methods, so T_f/T_b is not available."
    goal = f"backprop's best training loss ({target.mean:.4g}, running mean of {window} steps)"
    paper_note = (f"; the paper reports T_f/T_b = {paper['T_f/T_b']:g}, forward gradient "
                  f"{1 / paper['T_f/T_b']:.3g}× faster" if "T_f/T_b" in paper else "")
    total = ratio.n + ratio.missed
    if ratio.n == 0:
        return (f"forward gradient did not reach {goal} within {steps} steps in any of {total} "
                f"seed(s){paper_note}: T_f/T_b not judged, the runs are too short.")
    speed = (f"{1 / ratio.mean:.3g}× faster" if ratio.mean < 1 else
             f"{ratio.mean:.3g}× slower")
    text = (f"forward gradient reached {goal} {speed} than backprop (T_f = {seconds(tf.mean)}, "
            f"T_b = {seconds(tb.mean)}, T_f/T_b = {ratio.mean:.3g})")
    if ratio.missed:
        text += (f", in the {ratio.n} of {total} seed(s) where it reached it at all within "
                 f"{steps} steps")
    text += paper_note
    if ratio.missed:
        text += (": T_f/T_b not judged against the paper, the runs are too short for "
                 f"{ratio.missed} of {total} seed(s)")
    elif ratio.n < 2:
        text += ": one seed, so not judged against the paper"
    elif flagged(stats, "uneven"):
        text += ": the wall times are uneven, so not judged against the paper"
    elif "T_f/T_b" in paper:
        agrees = (ratio.mean < 1) == (paper["T_f/T_b"] < 1)
        text += (f": this agrees with the paper in direction ({ratio.n} seeds)" if agrees else
                 f": this does not agree with the paper ({ratio.n} seeds)")
    return text + "." + _uneven_note(stats)


def _uneven_note(stats: dict[str, Stat | None]) -> str:
    """Says where wall times include slowdowns of a shared machine, with the estimate from the
    median step times ("" where the wall times are even)."""
    if not flagged(stats, "uneven"):
        return ""
    ef, eb = stats.get("evenness_forward"), stats.get("evenness_backprop")
    quiet = stats.get("T_f/T_b (medians)")
    ratios = ", ".join(f"{name} {s.mean:.3g}" for name, s in (("forward gradient", ef),
                                                                  ("backprop", eb)) if s)
    estimate = (f" From the median step times, T_f/T_b ≈ (iterations ratio) × R_f/R_b = "
                f"{quiet.mean:.3g}: the estimate to read for this machine."
                if quiet is not None and quiet.n else "")
    return (f" The wall times are uneven (a run's mean step over its median step: {ratios}; "
            f"above {UNEVEN:g} the machine was shared during part of the run), so T_f, T_b "
            "and T_f/T_b include those slowdowns and are not timings; step times, R_f and R_b "
            f"are medians and unaffected.{estimate}")


def _still_falling(stats: dict[str, Stat | None], steps: int) -> str:
    """Says when backprop's best loss came in the last 5 % of the run: its loss was still
    falling, so the runs are too short to compare the methods beyond the start of training."""
    step_b = stats.get("step_b")
    if step_b is None or not step_b.n or step_b.mean < 0.95 * steps:
        return ""
    return (f"Backprop's smoothed loss was still falling when the runs ended (its best at step "
            f"{step_b.mean:,.0f} of {steps:,}): the runs are too short to decide how the methods "
            "compare once the model has learned; the ratios above describe the start of "
            "training.")


def _per_seed_line(seeds: dict[int, dict[str, MnistRun]], window: int) -> str:
    """T_f/T_b of every seed, with the steps at which each method first reached the target."""
    parts = []
    for seed, runs in sorted(seeds.items()):
        if "forward" not in runs or "backprop" not in runs:
            continue
        m = seed_metrics(runs["forward"], runs["backprop"], window)
        steps = int(runs["forward"].summary["steps"])
        if m["cross_machine"]:
            reach = (f"forward at step {m['step_f']:,.0f}, {m['step_f/step_b']:.3g}× backprop's "
                     "steps" if math.isfinite(m["step_f"]) else
                     f"forward not reached in {steps:,} steps")
            fwd, bp = runs["forward"].machine, runs["backprop"].machine
            parts.append(f"seed {seed}: wall times not compared, forward ({fwd}) and backprop "
                         f"({bp}) ran on different machines; per iteration: {reach}, backprop "
                         f"at step {m['step_b']:,.0f}")
        elif math.isfinite(m["T_f"]):
            parts.append(f"seed {seed}: {m['T_f/T_b']:.3g} (forward at step {m['step_f']:,.0f}, "
                         f"backprop at step {m['step_b']:,.0f}: {m['step_f/step_b']:.3g} of "
                         "backprop's iterations)")
        else:
            parts.append(f"seed {seed}: not reached in {steps:,} steps (T_f/T_b > "
                         f"{m['T_f/T_b_bound']:.3g}; backprop at step {m['step_b']:,.0f})")
    reached = sum("not reached" not in p for p in parts)  # "not reached": forward never did
    return (f"T_f/T_b per seed ({reached} of {len(parts)} seed(s) reached backprop's best "
            f"loss): " + "; ".join(parts) + ".") if parts else ""


def _schedule_line(runs: Sequence[MnistRun], lr: float) -> str:
    """The schedule's total step size over the run, beside its cap η₀/k."""
    k = float(runs[0].summary.get("config", {}).get("decay") or 0.0)
    steps = max(int(r.summary["steps"]) for r in runs)
    if k <= 0:
        return ""
    total = lr * (1 - math.exp(-steps * k)) / k
    return (f"The schedule η_i = η₀·e^(−ik) (k = {k:g}) gives a run of {steps:,} steps a total "
            f"step size Σ η_i = η₀(1 − e^(−Nk))/k = {total:.3g}, of at most η₀/k = {lr / k:.3g} "
            "for any length.")


def _iteration_sentence(stats: dict[str, Stat | None], paper: dict[str, float]) -> str:
    """Per iteration: forward's steps to backprop's best loss over backprop's, against the
    value the paper's T_f/T_b and R_f/R_b imply."""
    ratio = stats.get("step_f/step_b")
    if ratio is None:
        return ""
    total = ratio.n + ratio.missed
    published = (f"; the paper's numbers imply {paper['step_f/step_b']:.3g} (its T_f/T_b ÷ "
                 "R_f/R_b)" if "step_f/step_b" in paper else "")
    if ratio.n == 0:
        return (f"Per iteration, forward gradient did not reach backprop's best loss in any of "
                f"{total} seed(s){published}.")
    fewer = "fewer" if ratio.mean < 1 else "more"
    return (f"Per iteration (independent of the hardware), forward gradient needed "
            f"{ratio.mean:.3g}× backprop's iterations to reach backprop's best loss ({fewer} "
            f"iterations; {ratio.n} of {total} seed(s) reached it){published}.")


def _accuracy_sentence(stats: dict[str, Stat | None]) -> str:
    af, ab = stats.get("acc_forward"), stats.get("acc_backprop")
    if af is None or ab is None:
        return ""
    return (f"Final test accuracy: forward gradient {af.mean:.4g}, backprop {ab.mean:.4g}.")


def _steps_of(seeds: dict[int, dict[str, MnistRun]]) -> int:
    return max(int(r.summary["steps"]) for runs in seeds.values() for r in runs.values())


def mnist_section(exp_dir: Path, window: int = SMOOTH_WINDOW) -> list[str]:
    """Markdown body for an MNIST experiment: one table per learning rate and a summary."""
    runs, excluded = load_mnist_runs(exp_dir)
    if not runs and not excluded:
        return []
    experiment = exp_dir.name
    lines, summary = ["", f_line(runs)] if runs else [], []
    if runs and experiment in PAPER_SOURCE:
        lines += ["", f"Paper values: {PAPER_SOURCE[experiment]}."]
    shared = shared_f_ms(runs)
    for lr, seeds in group_runs(runs).items():
        stats = lr_stats(seeds, window, shared)
        paper = paper_values(experiment, lr)
        steps = _steps_of(seeds)
        lr_runs = [r for by_variant in seeds.values() for r in by_variant.values()]
        lines += ["", f"### η₀ = {lr:g}", "",
                  " ".join(x for x in (setup_line(lr_runs), _schedule_line(lr_runs, lr)) if x),
                  ""]
        lines += _lr_table(stats, paper)
        per_seed = _per_seed_line(seeds, window)
        if per_seed:
            lines += ["", per_seed]
        summary.append(f"At η₀ = {lr:g}: " + " ".join(
            s for s in (_time_sentence(stats, paper, steps, window),
                        _iteration_sentence(stats, paper), _still_falling(stats, steps),
                        _speed_sentence(stats, paper),
                        _accuracy_sentence(stats)) if s))
    if summary:
        lines += ["", "**Summary.** " + " ".join(summary)]
    else:
        lines += ["", "No complete runs."]
    return lines[1:] + excluded_lines(excluded)


# ----------------------------------------------------------------------------- figure


def _mnist_row(axes: Sequence[Axes], lr: float, seeds: dict[int, dict[str, MnistRun]]) -> None:
    by_method = {m: [runs[m] for _, runs in sorted(seeds.items()) if m in runs] for m in METHODS}
    smooth = f"training loss (mean of {SMOOTH_WINDOW} steps)"
    for method, runs in by_method.items():
        if not runs:
            continue
        c = mnist_curves(runs)
        label = f"{METHOD_LABELS[method]}, η₀ = {lr:g}"
        dashed = method == "forward"  # visible where it lies on backprop's curve
        band(axes[0], c["steps"], c["loss"], method, label, dashed=dashed)
        band(axes[1], c["loss_time"].mean(axis=0), c["loss"], method, label, dashed=dashed)
        band(axes[2], c["step"], c["time"], method, label)
        band(axes[3], c["eval_time"].mean(axis=0), c["acc"], method, label)
    stats = lr_stats(seeds)  # T_f, T_b: the report's numbers (mean over seeds; inf: never)
    marks = mark_times(axes[1], {m: (s.mean if (s := stats.get(f"T_{m[0]}")) else None)
                                 for m in METHODS})
    tag = f"η₀ = {lr:g}"
    machines = len({r.machine for runs in seeds.values() for r in runs.values()})
    timed = (f"({tag})\nruns on {machines} machines: times not comparable" if machines > 1
             else f"({tag})")
    style_axes(axes[0], "iteration", smooth, f"loss vs iterations ({tag})", logy=True)
    title = f"loss vs time {timed}" + (f"\n{marks} (dotted)" if marks else "")
    style_axes(axes[1], "wall time (s)", smooth, title, logy=True)
    for ax in axes[:2]:  # losses fall from the top left: the top right is free
        ax.legend(fontsize=6.5, loc="upper right", framealpha=0.7)
    style_axes(axes[2], "iteration", "wall time (s)", f"time vs iterations {timed}")
    style_axes(axes[3], "wall time (s)", "test accuracy", f"test accuracy vs time {timed}")
    if flagged(stats, "uneven"):  # inside the panels, where losses and times leave room
        for ax, (x, y, ha) in ((axes[1], (0.03, 0.04, "left")), (axes[2], (0.97, 0.04, "right")),
                               (axes[3], (0.97, 0.04, "right"))):
            ax.text(x, y, "uneven wall times\n(shared machine): see report", ha=ha,
                    va="bottom", fontsize=7, color="0.3", transform=ax.transAxes)


def load_mnist(exp_dir: Path) -> dict[float, dict[int, dict[str, MnistRun]]]:
    """Complete MNIST runs by learning rate, seed and method."""
    return group_runs(load_mnist_runs(exp_dir)[0])


def plot_mnist(groups: dict[float, dict[int, dict[str, MnistRun]]], name: str
               ) -> Figure | None:
    """An MNIST experiment, one row per learning rate: loss vs iterations, loss vs time (marked
    where each method first reaches backprop's best loss), time vs iterations, accuracy vs
    time; forward gradient's loss dashed (it can lie on backprop's); loss ranges per row,
    accuracy shared."""
    if not groups:
        return None
    fig, axes = _new_figure(len(groups), 4)
    for row, (lr, seeds) in zip(axes, groups.items()):
        _mnist_row(row, lr, seeds)
    share_y(axes, columns=(3,))  # losses: each row its own range (2e-5 moves 2.30 → 2.20)
    n_seeds = max(len(seeds) for seeds in groups.values())
    lines = ("one seed" if n_seeds == 1 else
             f"bold: mean over {n_seeds} seeds, thin: each seed")
    reach = ("first time each reaches backprop's best smoothed loss" if n_seeds == 1 else
             "first time each reaches backprop's best smoothed loss, mean over the seeds that "
             "reach it")
    fig.suptitle(f"{name}: forward gradient vs backprop ({lines}; dotted: {reach})",
                 fontsize=11)
    return fig


FAMILY = Family(section=mnist_section, load=load_mnist, draw=plot_mnist)
