"""``REPORT.md`` from results files: loading runs, the paper's metrics, one section per experiment.

Everything here reads the files an experiment wrote under ``OUT/<experiment>/`` (see
:mod:`fgrad._results`); nothing reruns training. The report is a registry of sections
(:data:`SECTIONS`): a section is a results folder name, a title and a function that turns the
folder into Markdown. A section whose folder is absent is shown as "not run".

Metrics (the paper's, Baydin et al. 2022, Section 5):

* ``T(f)``: median time of one loss evaluation on one batch (``f_ms`` of a run's summary).
* ``R_f = T(forward-gradient step) / T(f)``, ``R_b = T(backprop step) / T(f)``, each from one
  run's own ``ms_per_step`` and ``f_ms``.
* ``T_b``: wall time at which backprop's training loss, smoothed by a trailing running mean of
  :data:`SMOOTH_WINDOW` steps, first reaches its own minimum (its "best loss"); ``T_f``: the
  wall time at which forward gradient's smoothed loss first falls to that value, for the same
  seed (both methods of a seed start from the same parameters and see the same batches).

Values are the mean ± standard deviation (population, ddof = 0) over seeds; runs that diverged
or did not finish are listed and left out of every mean.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgrad._functions import MINIMA
from fgrad._results import ResultsError, read_json, read_jsonl

SMOOTH_WINDOW = 100
METHODS = ("forward", "backprop")
METHOD_LABELS = {"forward": "forward gradient", "backprop": "backprop"}
CONVERGED_DISTANCE = 0.1  # test functions: a final iterate this close to the minimum converged
MIB = 2.0**20

# The paper's published numbers (read off its figures), by experiment and learning rate η₀
# (None: any rate). Keys are metric names of :data:`MNIST_ROWS`.
PAPER: dict[str, dict[float | None, dict[str, float]]] = {
    "logreg": {None: {"T_f/T_b": 0.553}},
    "mlp": {
        2e-5: {"T_f": 165.8, "T_b": 292.4, "T_f/T_b": 0.567, "R_f": 2.329, "R_b": 3.971,
               "R_f/R_b": 0.586},
        2e-4: {"T_f": 68.0, "T_b": 297.0, "T_f/T_b": 0.229, "R_f": 2.607, "R_b": 4.359,
               "R_f/R_b": 0.598},
    },
}
# For the depth-sweep section, when its experiment exists: R_f ≈ 2.5 → 4.2 and R_b ≈ 4.5 → 5.0
# from 1 to 100 layers, with equal memory for both methods.
PAPER_DEPTH_SWEEP = {"layers": (1, 100), "R_f": (2.5, 4.2), "R_b": (4.5, 5.0)}


# ----------------------------------------------------------------------------- loading


def _require(summary: dict[str, Any], keys: Iterable[str], path: Path) -> None:
    missing = [k for k in keys if k not in summary]
    if missing:
        raise ResultsError(f"results file {path} lacks {', '.join(missing)}: delete it and "
                           "rerun the experiment")


def _number(value: Any) -> float | None:
    """A summary's number as a float (None for null/missing; "nan"/"inf" strings parsed)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Excluded:
    """A run left out of the means: where its summary is and why."""

    path: Path
    status: str
    steps_done: int | None
    steps: int | None
    diverged_step: int | None = None

    def describe(self) -> str:
        """One Markdown list item."""
        if self.status == "diverged":
            why = f"diverged (non-finite training loss at step {self.diverged_step})"
        else:
            why = f"{self.status} ({self.steps_done} of {self.steps} steps logged)"
        return f"- `{self.path}`: {why}"


def _excluded(path: Path, summary: dict[str, Any]) -> Excluded:
    return Excluded(path, str(summary.get("status")), summary.get("steps_done"),
                    summary.get("steps"), summary.get("diverged_step"))


@dataclass(frozen=True)
class MnistRun:
    """One complete MNIST run: its summary, per-step training log and evaluations."""

    path: Path
    summary: dict[str, Any]
    step: np.ndarray       # (n,) training steps 1..n
    loss: np.ndarray       # (n,) training loss of each step
    time: np.ndarray       # (n,) cumulative training seconds after each step
    eval_time: np.ndarray  # (m,) cumulative seconds at each evaluation (step 0 included)
    test_acc: np.ndarray   # (m,)

    @property
    def method(self) -> str:
        return self.summary["method"]

    @property
    def learning_rate(self) -> float:
        return float(self.summary["learning_rate"])

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])


MNIST_KEYS = ("method", "learning_rate", "seed", "status", "steps", "steps_done")


def _read_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows) of a run's JSONL log; ResultsError naming it when unusable."""
    rows = read_jsonl(path)
    try:
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        for r in train:
            float(r["loss"]), float(r["time"]), int(r["step"])
        for r in evals:
            float(r["time"]), float(r["test_acc"])
    except (KeyError, TypeError, ValueError) as e:
        raise ResultsError(f"results file {path} has a malformed row ({type(e).__name__}: "
                           f"{e}): delete the run and rerun the experiment") from None
    if not train:
        raise ResultsError(f"results file {path} holds no training steps: delete the run and "
                           "rerun the experiment")
    return train, evals


def _mnist_run(path: Path, summary: dict[str, Any]) -> MnistRun:
    train, evals = _read_log(path.with_suffix(".jsonl"))
    return MnistRun(
        path=path, summary=summary,
        step=np.array([r["step"] for r in train], np.int64),
        loss=np.array([r["loss"] for r in train], np.float64),
        time=np.array([r["time"] for r in train], np.float64),
        eval_time=np.array([r["time"] for r in evals], np.float64),
        test_acc=np.array([r["test_acc"] for r in evals], np.float64))


def run_summaries(exp_dir: str | Path, pattern: str = "*.json") -> list[tuple[Path, dict]]:
    """(path, summary) of every results summary in ``exp_dir`` matching ``pattern``, sorted."""
    return [(p, read_json(p)) for p in sorted(Path(exp_dir).glob(pattern))]


def load_mnist_runs(exp_dir: str | Path) -> tuple[list[MnistRun], list[Excluded]]:
    """The complete runs of an MNIST experiment folder, and the runs left out (not complete).

    Raises:
      ResultsError: naming the file, when a summary or a complete run's log is missing or
        malformed.
    """
    runs, excluded = [], []
    for path, summary in run_summaries(exp_dir, "*_lr*_seed*.json"):
        _require(summary, MNIST_KEYS, path)
        if summary["status"] == "complete":
            _require(summary, ("ms_per_step", "final_train_loss"), path)
            runs.append(_mnist_run(path, summary))
        else:
            excluded.append(_excluded(path, summary))
    return runs, excluded


@dataclass(frozen=True)
class TrajectoryRun:
    """One (test function, method): summary and, when loaded, the arrays of every seed."""

    path: Path
    summary: dict[str, Any]
    f: np.ndarray | None = None           # (seeds, steps+1)
    x: np.ndarray | None = None           # (seeds, steps+1, 2)
    time: np.ndarray | None = None        # (seeds, chunks+1) cumulative seconds
    time_steps: np.ndarray | None = None  # (chunks+1,) iterations where time was read

    @property
    def function(self) -> str:
        return self.summary["function"]

    @property
    def method(self) -> str:
        return self.summary["method"]

    @property
    def fn_config(self) -> dict[str, Any]:
        return self.summary["config"]["functions"][self.function]

    def number(self, key: str) -> float:
        """A number of the summary as a float (nan where it is null or not finite)."""
        value = _number(self.summary.get(key))
        return math.nan if value is None else value


TRAJECTORY_KEYS = ("function", "method", "status", "config", "final_f_mean", "final_f_std",
                   "us_per_step", "compile_s_mean")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as z:
            arrays = {k: np.asarray(z[k]) for k in ("f", "x", "time", "time_steps")}
    except FileNotFoundError:
        raise ResultsError(f"results file {path} is missing: rerun the experiment") from None
    except (OSError, ValueError, KeyError) as e:
        raise ResultsError(f"results file {path} is malformed ({e}): delete it and rerun the "
                           "experiment") from None
    if arrays["f"].ndim != 2 or arrays["x"].shape != (*arrays["f"].shape, 2):
        raise ResultsError(f"results file {path} has arrays of unexpected shapes "
                           f"f {arrays['f'].shape}, x {arrays['x'].shape}: delete it and rerun")
    return arrays


def load_trajectories(exp_dir: str | Path, arrays: bool = True
                      ) -> tuple[list[TrajectoryRun], list[Excluded]]:
    """The complete (function, method) results of a test-function folder, and the others.

    Args:
      exp_dir: the experiment's results folder.
      arrays: also load each ``.npz`` (f, x and times of every seed).
    """
    runs, excluded = [], []
    for path, summary in run_summaries(exp_dir):
        _require(summary, TRAJECTORY_KEYS, path)
        if summary["status"] != "complete":
            excluded.append(_excluded(path, summary))
            continue
        data = _load_npz(path.with_suffix(".npz")) if arrays else {}
        runs.append(TrajectoryRun(path, summary, **data))
    return runs, excluded


# ----------------------------------------------------------------------------- metrics


def running_mean(values: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """Trailing running mean over ``window`` values (fewer when there are fewer values): entry
    ``j`` averages ``values[j : j + w]``, so it belongs to index ``j + w - 1``."""
    w = max(1, min(int(window), len(values)))
    c = np.cumsum(np.concatenate([[0.0], np.asarray(values, np.float64)]))
    return (c[w:] - c[:-w]) / w


def smoothed_loss(run: MnistRun, window: int = SMOOTH_WINDOW
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, times, smoothed loss) of a run, the running mean aligned to its last step."""
    s = running_mean(run.loss, window)
    first = len(run.loss) - len(s)
    return run.step[first:], run.time[first:], s


def best_loss(run: MnistRun, window: int = SMOOTH_WINDOW) -> float:
    """The lowest smoothed training loss of a run."""
    return float(np.min(smoothed_loss(run, window)[2]))


def time_to_reach(run: MnistRun, target: float, window: int = SMOOTH_WINDOW) -> float:
    """Wall time at which the run's smoothed loss first is ≤ ``target``; inf if it never is."""
    _, times, s = smoothed_loss(run, window)
    hit = np.flatnonzero(s <= target)
    return float(times[hit[0]]) if hit.size else math.inf


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or not math.isfinite(b):
        return None
    return a / b


def _mean_of(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _method_metrics(run: MnistRun, method: str) -> dict[str, float | None]:
    s = run.summary
    mem = s.get("memory") or {}
    ms, f_ms = _number(s.get("ms_per_step")), _number(s.get("f_ms"))
    return {f"ms_{method}": ms, f"f_ms_{method}": f_ms,
            f"R_{method[0]}": _ratio(ms, f_ms),
            f"loss_{method}": _number(s.get("final_train_loss")),
            f"acc_{method}": _number((s.get("final_eval") or {}).get("test_acc")),
            f"mem_{method}": _ratio(_number((mem.get("step_xla") or {}).get("peak_estimate")),
                                    MIB),
            f"dev_{method}": _ratio(_number(mem.get("device_peak")), MIB)}


def seed_metrics(forward: MnistRun | None, backprop: MnistRun | None,
                 window: int = SMOOTH_WINDOW) -> dict[str, float | None]:
    """Every metric of one seed from its complete runs (either may be None).

    Keys: ``f_ms`` (mean of both runs' T(f)), ``ms_forward``, ``ms_backprop``, ``R_f``, ``R_b``,
    ``R_f/R_b``, ``target`` (backprop's best smoothed loss), ``T_f``, ``T_b``, ``T_f/T_b``
    (inf when forward gradient never reaches the target), ``loss_*``, ``acc_*``, ``mem_*``
    (MiB, XLA's estimate for one compiled step), ``dev_*`` (MiB, device allocator peak).
    """
    m: dict[str, float | None] = {}
    for method, run in (("forward", forward), ("backprop", backprop)):
        if run is not None:
            m.update(_method_metrics(run, method))
    m["f_ms"] = _mean_of([m.get("f_ms_forward"), m.get("f_ms_backprop")])
    m["R_f/R_b"] = _ratio(m.get("R_f"), m.get("R_b"))
    if forward is not None and backprop is not None:
        m["target"] = best_loss(backprop, window)
        m["T_b"] = time_to_reach(backprop, m["target"], window)
        m["T_f"] = time_to_reach(forward, m["target"], window)
        m["T_f/T_b"] = _ratio(m["T_f"], m["T_b"])
    return m


def group_runs(runs: Iterable[MnistRun]) -> dict[float, dict[int, dict[str, MnistRun]]]:
    """Runs by learning rate, then seed, then method."""
    groups: dict[float, dict[int, dict[str, MnistRun]]] = {}
    for r in runs:
        groups.setdefault(r.learning_rate, {}).setdefault(r.seed, {})[r.method] = r
    return dict(sorted(groups.items()))


@dataclass(frozen=True)
class Stat:
    """Mean ± std over the seeds with a finite value; ``missed`` seeds had inf (not reached)."""

    mean: float
    std: float
    n: int
    missed: int


def aggregate(values: Iterable[float | None]) -> Stat | None:
    """Mean ± population std of the finite values; None when no seed has the value."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    finite = [v for v in vals if math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else math.inf
    std = float(np.std(finite)) if finite else math.nan
    return Stat(mean, std, len(finite), len(vals) - len(finite))


def mean_std(mean: float, std: float) -> str:
    """``mean ± std`` with 4 and 2 significant digits."""
    return f"{mean:.4g} ± {std:.2g}"


def format_stat(stat: Stat | None) -> str:
    """``mean ± std``, 4 and 2 significant digits (the mean alone for one seed)."""
    if stat is None:
        return "n/a"
    total = stat.n + stat.missed
    if stat.n == 0:
        return f"not reached ({stat.missed}/{total} seeds)"
    text = f"{stat.mean:.4g}" if stat.n == 1 else mean_std(stat.mean, stat.std)
    if stat.missed:
        text += f" (not reached in {stat.missed}/{total} seeds)"
    return text


def lr_stats(seeds: dict[int, dict[str, MnistRun]], window: int = SMOOTH_WINDOW
             ) -> dict[str, Stat | None]:
    """Every metric of one learning rate, aggregated over its seeds."""
    per_seed = [seed_metrics(r.get("forward"), r.get("backprop"), window)
                for _, r in sorted(seeds.items())]
    keys = {k for m in per_seed for k in m}
    return {k: aggregate(m.get(k) for m in per_seed) for k in keys}


# ----------------------------------------------------------------------------- markdown helpers


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _excluded_lines(excluded: Sequence[Excluded]) -> list[str]:
    if not excluded:
        return []
    return ["", f"**Excluded from every mean and figure** ({len(excluded)} run(s)):", "",
            *[e.describe() for e in excluded]]


def _figure_lines(out: Path, name: str, title: str) -> list[str]:
    png = out / "figures" / f"{name}.png"
    if not png.exists():
        return []
    return ["", f"![{title}](figures/{name}.png)", "",
            f"Figure: `figures/{name}.png` (and `.pdf`)."]


# ----------------------------------------------------------------------------- test functions


def _final_distance(run: TrajectoryRun) -> float | None:
    if run.x is None:
        return None
    return float(np.mean(np.linalg.norm(run.x[:, -1] - np.asarray(MINIMA[run.function]),
                                        axis=-1)))


def _trajectory_row(run: TrajectoryRun) -> list[str]:
    s, fc = run.summary, run.fn_config
    seeds = len(s.get("final_f") or s.get("seeds") or [])
    dist = _final_distance(run)
    return [run.function, METHOD_LABELS[run.method], f"{fc['learning_rate']:g}",
            str(fc["steps"]), str(seeds),
            mean_std(run.number("final_f_mean"), run.number("final_f_std")),
            "n/a" if dist is None else f"{dist:.4g}",
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
    verdict = ("cheaper, as the paper's runtime argument expects" if ratio < 1 else
               "not cheaper here, unlike what the paper's runtime argument expects")
    return text + (f"A forward-gradient iteration took {ratio:.3g}× the time of a backprop "
                   f"iteration ({us_f:.3g} vs {us_b:.3g} µs): {verdict} (its Section 2.3: "
                   "forward mode costs less than reverse mode).")


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
        [_trajectory_row(r) for r in runs])
    by_fn: dict[str, dict[str, TrajectoryRun]] = {}
    for r in runs:
        by_fn.setdefault(r.function, {})[r.method] = r
    summary = " ".join(_trajectory_sentence(fn, ms) for fn, ms in by_fn.items())
    lines += ["", "Time per iteration excludes compilation (timed apart); std over seeds "
              "(ddof = 0).", "", f"**Summary.** {summary}"]
    return lines + _excluded_lines(excluded)


# ----------------------------------------------------------------------------- MNIST


def _mnist_rows(window: int) -> list[tuple[str, str]]:
    """(metric key, row label) of an MNIST learning-rate table."""
    rows = [("f_ms", "T(f): loss on one batch, ms"),
            ("ms_forward", "forward-gradient step, ms"),
            ("ms_backprop", "backprop step, ms"),
            ("R_f", "R_f = T(fwd-grad step) / T(f)"),
            ("R_b", "R_b = T(backprop step) / T(f)"),
            ("R_f/R_b", "R_f / R_b"),
            ("target", f"backprop's best training loss (running mean of {window} steps)"),
            ("T_f", "T_f: wall time for forward gradient to reach it, s"),
            ("T_b", "T_b: wall time for backprop to reach it, s"),
            ("T_f/T_b", "T_f / T_b")]
    for key, label in (("loss", "final training loss (mean of last 100 steps)"),
                       ("acc", "final test accuracy"),
                       ("mem", "memory of one compiled step (XLA estimate), MiB"),
                       ("dev", "device allocator peak, MiB")):
        rows += [(f"{key}_{m}", f"{label}, {METHOD_LABELS[m]}") for m in METHODS]
    return rows


MNIST_ROWS = _mnist_rows(SMOOTH_WINDOW)


def paper_values(experiment: str, learning_rate: float) -> dict[str, float]:
    """The paper's published metrics for this experiment and η₀ (empty where it has none)."""
    by_lr = PAPER.get(experiment, {})
    for lr, values in by_lr.items():
        if lr is None or math.isclose(lr, learning_rate, rel_tol=1e-6):
            return values
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


def _speed_sentence(stats: dict[str, Stat | None], paper: dict[str, float]) -> str:
    rf, rb, ratio = stats.get("R_f"), stats.get("R_b"), stats.get("R_f/R_b")
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
    if tf is None or tb is None or ratio is None or target is None:
        return "No seed has complete runs of both methods, so T_f/T_b is not available."
    goal = f"backprop's best training loss ({target.mean:.4g}, running mean of {window} steps)"
    paper_note = (f"; the paper reports T_f/T_b = {paper['T_f/T_b']:g}, forward gradient "
                  f"{1 / paper['T_f/T_b']:.3g}× faster" if "T_f/T_b" in paper else "")
    total = ratio.n + ratio.missed
    if ratio.n == 0:
        return (f"forward gradient did not reach {goal} within {steps} steps in any of {total} "
                f"seed(s){paper_note}.")
    speed = (f"{1 / ratio.mean:.3g}× faster" if ratio.mean < 1 else
             f"{ratio.mean:.3g}× slower")
    text = (f"forward gradient reached {goal} {speed} than backprop (T_f = {tf.mean:.3g} s, "
            f"T_b = {tb.mean:.3g} s, T_f/T_b = {ratio.mean:.3g})")
    if ratio.missed:
        text += (f", in the {ratio.n} of {total} seed(s) where it reached it at all within "
                 f"{steps} steps")
    text += paper_note
    if "T_f/T_b" in paper:
        agrees = ratio.missed == 0 and (ratio.mean < 1) == (paper["T_f/T_b"] < 1)
        text += ": this agrees with the paper in direction" if agrees else \
            ": this does not agree with the paper"
    return text + "."


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
    lines, summary = [], []
    for lr, seeds in group_runs(runs).items():
        stats = lr_stats(seeds, window)
        paper = paper_values(experiment, lr)
        steps = _steps_of(seeds)
        cfg = next(iter(next(iter(seeds.values())).values())).summary.get("config", {})
        lines += ["", f"### η₀ = {lr:g}", "",
                  f"{steps} steps, batch {cfg.get('batch_size', '?')}, seeds "
                  f"{', '.join(str(s) for s in sorted(seeds))}; mean ± std over seeds "
                  "(ddof = 0).", ""]
        lines += _lr_table(stats, paper)
        summary.append(f"At η₀ = {lr:g}: " + " ".join(
            s for s in (_time_sentence(stats, paper, steps, window),
                        _speed_sentence(stats, paper), _accuracy_sentence(stats)) if s))
    if summary:
        lines += ["", "**Summary.** " + " ".join(summary)]
    else:
        lines += ["", "No complete runs."]
    return lines[1:] + _excluded_lines(excluded)


# ----------------------------------------------------------------------------- the report

DEFINITIONS = (
    "Definitions. T(f): median wall time of one jitted call of the loss on one batch. A step's "
    "time: training wall time / steps (several steps per compiled call where configured; "
    "compilation and evaluation excluded). R_f = T(forward-gradient step) / T(f) and "
    "R_b = T(backprop step) / T(f), each from one run. Training losses are smoothed by a "
    "trailing running mean of {window} steps; T_b is when backprop's smoothed loss reaches its "
    "minimum, T_f when forward gradient's smoothed loss first falls to that value (same seed). "
    "Values are mean ± std over seeds (ddof = 0); runs that diverged or did not finish are "
    "listed in their section and left out of every mean and figure.")


@dataclass(frozen=True)
class Section:
    """One experiment of the report: results folder ``OUT/name``, title, Markdown body."""

    name: str
    title: str
    body: Callable[[Path], list[str]]


SECTIONS: list[Section] = [
    Section("test_functions", "Test functions: Beale and Rosenbrock (paper Figure 2)",
            trajectories_section),
    Section("logreg", "Logistic regression on MNIST", mnist_section),
    Section("mlp", "MLP on MNIST", mnist_section),
    Section("cnn", "CNN on MNIST", mnist_section),
]


def render_section(out: Path, section: Section) -> list[str]:
    """The section's heading and body, or a "not run" note when its results are absent."""
    exp_dir = out / section.name
    body = section.body(exp_dir) if exp_dir.is_dir() else []
    if not body:
        body = [f"*Not run*: no results in `{exp_dir}`."]
    return [f"## {section.title}", "", *body, *_figure_lines(out, section.name, section.title),
            ""]


def _machine(env: dict[str, Any]) -> str:
    if env.get("platform", "cpu") == "cpu":
        return f"CPU {env.get('cpu', '?')} ({env.get('cpu_cores', '?')} cores)"
    return f"{env.get('platform', '?').upper()} {env.get('device', '?')}"


def _env_line(env: dict[str, Any]) -> str:
    versions = ", ".join(f"{p} {env.get(p, '?')}" for p in ("jax", "jaxlib", "flax", "optax"))
    return f"{_machine(env)}; {versions}"


def result_envs(out: Path, sections: Sequence[Section] = ()) -> list[tuple[str, dict]]:
    """(experiment, env) of every results summary under ``out`` that records its env."""
    return [(section.name, summary["env"]) for section in sections or SECTIONS
            if (out / section.name).is_dir()
            for _, summary in run_summaries(out / section.name)
            if isinstance(summary.get("env"), dict)]


def _machine_lines(envs: Sequence[tuple[str, dict]]) -> list[str]:
    """One "Machine" line per distinct machine/versions, naming its experiments if several."""
    by_line: dict[str, list[str]] = {}
    for name, env in envs:
        names = by_line.setdefault(_env_line(env), [])
        if name not in names:
            names.append(name)
    if len(by_line) == 1:
        return [f"- Machine: {line}." for line in by_line]
    return [f"- Machine ({', '.join(names)}): {line}." for line, names in by_line.items()]


def _header(out: Path, preset: str | None, command: str | None) -> list[str]:
    record = read_json(out / "reproduce.json") if (out / "reproduce.json").exists() else {}
    runs = [r for r in record.get("invocations", []) if not r.get("figures_only")]
    preset = preset or record.get("preset") or "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = ["# Gradients without Backpropagation: reproduction report", "",
             f"- Preset: `{preset}`; results folder `{out}`.",
             f"- Report generated {now} by `{command or 'fgrad._report.write_report'}`."]
    if runs:
        last = runs[-1]
        total = sum(float(r.get("experiments_wall_time_s") or 0.0) for r in runs)
        lines.append(f"- Experiments last run by `{last['command']}` on {last['date']}: "
                     f"wall time {last['experiments_wall_time_s']:.1f} s for "
                     f"{', '.join(last['experiments'])} (runs already complete are skipped); "
                     f"{total:.1f} s over all {len(runs)} recorded invocation(s) "
                     "(`reproduce.json`).")
    envs = result_envs(out)
    dates = sorted({str(env["date"])[:10] for _, env in envs if env.get("date")})
    if dates:
        lines.append(f"- Results dated {dates[0]}" + (f" to {dates[-1]}." if len(dates) > 1
                                                       else "."))
    lines += _machine_lines(envs)
    return lines + ["", DEFINITIONS.format(window=SMOOTH_WINDOW), ""]


def report_markdown(out: str | Path, preset: str | None = None, command: str | None = None,
                    sections: Sequence[Section] = ()) -> str:
    """The whole report as Markdown, from the results under ``out``.

    Raises:
      ResultsError: naming the file, when a results file is missing or malformed.
    """
    out = Path(out)
    lines = _header(out, preset, command)
    for section in sections or SECTIONS:
        lines += render_section(out, section)
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: str | Path, preset: str | None = None, command: str | None = None
                 ) -> Path:
    """Writes ``out/REPORT.md`` from the results under ``out``; returns its path."""
    path = Path(out) / "REPORT.md"
    text = report_markdown(out, preset, command)
    tmp = path.with_suffix(".md.partial")
    tmp.write_text(text)
    tmp.replace(path)
    return path

