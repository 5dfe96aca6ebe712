"""Test functions (Beale, Rosenbrock; paper Figure 2): the report section and the figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fgrad._functions import MINIMA
from fgrad.analysis.family import Family
from fgrad.analysis.metrics import METHOD_LABELS, METHODS, _ratio
from fgrad.analysis.plotting import _new_figure, band, contour, style_axes
from fgrad.analysis.runs import TrajectoryRun, load_trajectories
from fgrad.analysis.tables import NA, excluded_lines, fmt, markdown_table, mean_std

CONVERGED_DISTANCE = 0.1  # a final iterate this close to the minimum converged


# ----------------------------------------------------------------------------- section


def _final_distance(run: TrajectoryRun) -> float | None:
    if run.x is None:
        return None
    return float(np.mean(np.linalg.norm(run.x[:, -1] - np.asarray(MINIMA[run.function]),
                                        axis=-1)))


def _table_row(run: TrajectoryRun) -> list[str]:
    s, fc = run.summary, run.fn_config
    seeds = len(s.get("final_f") or s.get("seeds") or [])
    dist = _final_distance(run)
    return [run.function, METHOD_LABELS[run.method], f"{fc['learning_rate']:g}",
            str(fc["steps"]), str(seeds),
            mean_std(run.number("final_f_mean"), run.number("final_f_std")),
            fmt(dist, ".4g", NA),
            f"{run.number('us_per_step'):.4g}", f"{run.number('compile_s_mean'):.3g}"]


def _trajectory_sentence(fn: str, by_method: dict[str, TrajectoryRun]) -> str:
    fwd, bp = by_method.get("forward"), by_method.get("backprop")
    if fwd is None or bp is None:
        have = ", ".join(METHOD_LABELS[m] for m in by_method)
        return f"{fn.capitalize()}: only {have} finished, so the methods cannot be compared."
    d_f, d_b = _final_distance(fwd), _final_distance(bp)
    conv = {m: d is not None and d < CONVERGED_DISTANCE for m, d in (("f", d_f), ("b", d_b))}
    text = (f"{fn.capitalize()}: forward gradient ended at f(x) = "
            f"{fwd.number('final_f_mean'):.3g} and backprop at "
            f"{bp.number('final_f_mean'):.3g} (mean over seeds; final iterate "
            f"{d_f:.3g} vs {d_b:.3g} from the minimum {MINIMA[fn]}). ")
    if conv["f"] and conv["b"]:
        text += (f"Both converge to the minimum (within {CONVERGED_DISTANCE}), as in the "
                 "paper. ")
    elif conv["b"]:
        text += (f"Backprop converges but forward gradient does not get within "
                 f"{CONVERGED_DISTANCE} of the minimum, unlike the paper, where both do. ")
    elif conv["f"]:
        text += (f"Forward gradient converges but backprop does not get within "
                 f"{CONVERGED_DISTANCE} of the minimum in these iterations. ")
    else:
        text += (f"Neither gets within {CONVERGED_DISTANCE} of the minimum in "
                 f"{fwd.fn_config['steps']} iterations, unlike the paper, where both do. ")
    us_f, us_b = fwd.number("us_per_step"), bp.number("us_per_step")
    ratio = _ratio(us_f, us_b)
    if ratio is None or math.isnan(ratio):
        return text + "Time per iteration is not available."
    text += (f"A forward-gradient iteration took {ratio:.3g}× the time of a backprop "
             f"iteration ({us_f:.3g} vs {us_b:.3g} µs; one warm-up call excluded where "
             "recorded).")
    sample = fwd.number("sample_us_per_step")
    if not math.isnan(sample):
        text += (f" Drawing its random tangent alone (a key split and a normal draw) costs "
                 f"{sample:.3g} µs per iteration.")
    return text + (" With two parameters these times measure the random draw and the "
                   "per-iteration overhead, not forward against reverse mode: the paper's "
                   "runtime argument concerns large models (see the MNIST sections and the "
                   "benchmark).")


def trajectories_section(exp_dir: Path) -> list[str]:
    """Markdown body for the Beale/Rosenbrock experiment."""
    runs, excluded = load_trajectories(exp_dir)
    if not runs and not excluded:
        return []
    order = {m: i for i, m in enumerate(METHODS)}
    runs = sorted(runs, key=lambda r: (r.function, order.get(r.method, 9)))
    lines = markdown_table(
        ["function", "method", "η", "iterations", "seeds", "final f(x), mean ± std",
         "final ‖x − x*‖, mean", "µs / iteration", "compile, s"],
        [_table_row(r) for r in runs])
    by_fn: dict[str, dict[str, TrajectoryRun]] = {}
    for r in runs:
        by_fn.setdefault(r.function, {})[r.method] = r
    summary = " ".join(_trajectory_sentence(fn, ms) for fn, ms in by_fn.items())
    lines += ["", "Time per iteration excludes compilation (timed apart); std over seeds "
              "(ddof = 0).", "", f"**Summary.** {summary}"]
    return lines + excluded_lines(excluded)


# ----------------------------------------------------------------------------- figure


def _per_iteration_time(run: TrajectoryRun) -> np.ndarray:
    """(seeds, steps+1) cumulative seconds at each iteration, interpolated between the times
    read at chunk boundaries."""
    its = np.arange(run.f.shape[1])
    return np.stack([np.interp(its, run.time_steps, t) for t in run.time])


def _panel_row(axes: Sequence[Axes], fn_name: str, runs: dict[str, TrajectoryRun]) -> None:
    title = fn_name.capitalize()
    for method, run in runs.items():
        label = f"{METHOD_LABELS[method]}, η = {run.fn_config['learning_rate']:g}"
        f = np.maximum(run.f.astype(np.float64), np.finfo(np.float32).tiny)
        band(axes[0], np.arange(f.shape[1]), f, method, label)
        band(axes[1], _per_iteration_time(run).mean(axis=0), f, method, label)
        band(axes[2], run.time_steps, run.time, method, label, marker=".")
    style_axes(axes[0], "iteration", "f(x)", f"{title}: f(x) vs iterations", logy=True)
    style_axes(axes[1], "wall time (s)", "f(x)", f"{title}: f(x) vs time", logy=True)
    chunk = int(np.diff(next(iter(runs.values())).time_steps[:2])[0])
    style_axes(axes[2], "iteration", "wall time (s)",
               f"{title}: time vs iterations (read every {chunk})")
    contour(axes[3], fn_name, {m: r.x for m, r in runs.items()})
    style_axes(axes[3], "x₁", "x₂", f"{title}: trajectories (all seeds)")
    axes[3].legend(fontsize=6.5, loc="lower right", framealpha=0.8)  # clear of the minimum


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
        _panel_row(row, fn_name, fn_runs)
    fig.suptitle("Test functions: forward gradient vs backprop (bold: mean over seeds, thin: "
                 "each seed)", fontsize=11)
    return fig


FAMILY = Family(section=trajectories_section, load=load_test_functions, draw=plot_test_functions)
