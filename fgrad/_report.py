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

Beyond the paper: MNIST runs may be tagged with a ``variant`` (a method with config overrides,
e.g. K tangents or Adam); runs are grouped by variant, which defaults to the method, so
experiments without variants read as before. Sections :func:`estimator_quality_section`,
:func:`k_sweep_section` and :func:`lr_sweep_section` report those experiments.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgrad._functions import MINIMA
from fgrad._results import ResultsError, read_json, read_jsonl, write_text_atomic

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
    summary: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> str:
        """One Markdown list item."""
        if self.status == "diverged":
            why = f"diverged (non-finite training loss at step {self.diverged_step})"
        else:
            why = f"{self.status} ({self.steps_done} of {self.steps} steps logged)"
        return f"- `{self.path}`: {why}"


def _excluded(path: Path, summary: dict[str, Any]) -> Excluded:
    return Excluded(path, str(summary.get("status")), summary.get("steps_done"),
                    summary.get("steps"), summary.get("diverged_step"), summary)


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
    diag_step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (d,)
    cosine: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (d,) cos(estimate, ∇)

    @property
    def method(self) -> str:
        return self.summary["method"]

    @property
    def variant(self) -> str:
        """The run's variant name; the method for runs of configs without variants."""
        return run_variant(self.summary)

    @property
    def learning_rate(self) -> float:
        return float(self.summary["learning_rate"])

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])


MNIST_KEYS = ("method", "learning_rate", "seed", "status", "steps", "steps_done")
Rows = list[dict[str, Any]]


def run_variant(summary: dict[str, Any]) -> str:
    """A run summary's ``variant``, defaulting to its ``method``."""
    return str(summary.get("variant") or summary["method"])


def _read_log(path: Path) -> tuple[Rows, Rows, Rows]:
    """(train, eval, diag) rows of a run's JSONL log; ResultsError naming it when unusable."""
    rows = read_jsonl(path)
    try:
        train, evals, diags = ([r for r in rows if r["kind"] == kind]
                               for kind in ("train", "eval", "diag"))
        for r in train:
            float(r["loss"]), float(r["time"]), int(r["step"])
        for r in evals:
            float(r["time"]), float(r["test_acc"])
        for r in diags:
            float(r["cosine"]), int(r["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise ResultsError(f"results file {path} has a malformed row ({type(e).__name__}: "
                           f"{e}): delete the run and rerun the experiment") from None
    if not train:
        raise ResultsError(f"results file {path} holds no training steps: delete the run and "
                           "rerun the experiment")
    return train, evals, diags


def _mnist_run(path: Path, summary: dict[str, Any]) -> MnistRun:
    train, evals, diags = _read_log(path.with_suffix(".jsonl"))
    return MnistRun(
        path=path, summary=summary,
        step=np.array([r["step"] for r in train], np.int64),
        loss=np.array([r["loss"] for r in train], np.float64),
        time=np.array([r["time"] for r in train], np.float64),
        eval_time=np.array([r["time"] for r in evals], np.float64),
        test_acc=np.array([r["test_acc"] for r in evals], np.float64),
        diag_step=np.array([r["step"] for r in diags], np.int64),
        cosine=np.array([r["cosine"] for r in diags], np.float64))


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


def _step_memory(mem: dict[str, Any]) -> float | None:
    """XLA's peak estimate for one compiled step, less the on-device training set it takes as
    an argument (the same for both methods), in bytes."""
    peak = _number((mem.get("step_xla") or {}).get("peak_estimate"))
    return None if peak is None else peak - (_number(mem.get("data_bytes")) or 0.0)


def run_metrics(run: MnistRun) -> dict[str, float | None]:
    """One run's ``ms`` per step, ``f_ms`` (T(f)), ``R`` = ms / f_ms, final training ``loss``,
    final test ``acc``, ``mem`` (MiB, XLA's estimate for one step beyond the training set),
    ``dev`` (MiB, device peak)."""
    s = run.summary
    mem = s.get("memory") or {}
    ms, f_ms = _number(s.get("ms_per_step")), _number(s.get("f_ms"))
    return {"ms": ms, "f_ms": f_ms, "R": _ratio(ms, f_ms),
            "loss": _number(s.get("final_train_loss")),
            "acc": _number((s.get("final_eval") or {}).get("test_acc")),
            "mem": _ratio(_step_memory(mem), MIB),
            "dev": _ratio(_number(mem.get("device_peak")), MIB)}


def _method_metrics(run: MnistRun, method: str) -> dict[str, float | None]:
    """:func:`run_metrics` keyed by method: ``ms_forward``, ``R_f``, ``loss_forward``, ..."""
    return {f"R_{method[0]}" if k == "R" else f"{k}_{method}": v
            for k, v in run_metrics(run).items()}


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
    """Runs by learning rate, then seed, then variant (the method, for configs without
    variants)."""
    groups: dict[float, dict[int, dict[str, MnistRun]]] = {}
    for r in runs:
        groups.setdefault(r.learning_rate, {}).setdefault(r.seed, {})[r.variant] = r
    return dict(sorted(groups.items()))


def natural_key(name: str) -> list[Any]:
    """Sort key reading digit runs as numbers (``K4`` before ``K16``)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def group_variants(runs: Iterable[MnistRun]
                   ) -> dict[str, dict[float, dict[int, MnistRun]]]:
    """Runs by variant (natural order), then learning rate, then seed."""
    groups: dict[str, dict[float, dict[int, MnistRun]]] = {}
    for r in runs:
        groups.setdefault(r.variant, {}).setdefault(r.learning_rate, {})[r.seed] = r
    return {v: dict(sorted(groups[v].items())) for v in sorted(groups, key=natural_key)}


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
                       ("mem", "memory of one step beyond the training set (XLA estimate), MiB"),
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


def _setup_line(runs: Sequence[MnistRun]) -> str:
    """Steps, batch size and seeds of some runs, and how values are aggregated."""
    steps = max(int(r.summary["steps"]) for r in runs)
    batch = runs[0].summary.get("config", {}).get("batch_size", "?")
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in runs}))
    return f"{steps} steps, batch {batch}, seeds {seeds}; mean ± std over seeds (ddof = 0)."


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
        lr_runs = [r for by_variant in seeds.values() for r in by_variant.values()]
        lines += ["", f"### η₀ = {lr:g}", "", _setup_line(lr_runs), ""]
        lines += _lr_table(stats, paper)
        summary.append(f"At η₀ = {lr:g}: " + " ".join(
            s for s in (_time_sentence(stats, paper, steps, window),
                        _speed_sentence(stats, paper), _accuracy_sentence(stats)) if s))
    if summary:
        lines += ["", "**Summary.** " + " ".join(summary)]
    else:
        lines += ["", "No complete runs."]
    return lines[1:] + _excluded_lines(excluded)


# ----------------------------------------------------------------------------- estimator quality

QUALITY_KEYS = ("point", "distribution", "combine", "num_tangents", "n", "samples", "cosine",
                "cos2_mean", "cos2_theory", "var_mean", "var_theory")
MODEL_ORDER = ("logreg", "mlp", "cnn")
QUALITY_FORMULAS = (
    "Theory (`fgrad/_quality.py`; ∇ is the exact gradient on one fixed minibatch, with n "
    "entries; g an estimate from K tangents v with i.i.d. zero-mean unit-variance entries): "
    "for the mean of K estimates, Var[g_i] = (‖∇‖² + ∇_i²) / K with normal v and "
    "(‖∇‖² − ∇_i²) / K with Rademacher v, so the mean over the n entries is "
    "(‖∇‖² ± ‖∇‖²/n) / K; E[cos²(g, ∇)] ≈ K / (n + K − 1) (n ≫ K; exactly 1/n for K = 1, "
    "normal). For the projection of ∇ onto span(v_1..v_K) with normal v, E[cos²] = K / n "
    "exactly (the span is uniformly random); no theory is given for its variance or for "
    "Rademacher projections (n/a). E[cos²] is measured over M estimates, ± its standard error.")


def _model_order(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


def load_quality(exp_dir: str | Path) -> tuple[dict[str, dict[str, Any]], list[Excluded]]:
    """Estimator-quality results by model (``<model>.json``; logreg, mlp, cnn first), and the
    files left out (not complete).

    Raises:
      ResultsError: naming the file, when a summary or one of its rows lacks a key.
    """
    models, excluded = {}, []
    for path, summary in run_summaries(exp_dir):
        _require(summary, ("model", "status", "rows"), path)
        if summary["status"] != "complete":
            excluded.append(_excluded(path, summary))
            continue
        for row in summary["rows"]:
            _require(row if isinstance(row, dict) else {}, QUALITY_KEYS, path)
        models[str(summary["model"])] = summary
    return {m: models[m] for m in sorted(models, key=_model_order)}, excluded


def quality_ratios(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """(E[cos²] measured / theory, mean Var[g_i] measured / theory) of one row (None: no
    theory)."""
    return (_ratio(_number(row["cos2_mean"]), _number(row["cos2_theory"])),
            _ratio(_number(row["var_mean"]), _number(row["var_theory"])))


def _cos2_error(row: dict[str, Any]) -> float:
    """Standard error of the measured E[cos²] (from the row's M cosines)."""
    cos2 = np.asarray(row["cosine"], np.float64) ** 2
    return float(np.std(cos2, ddof=1) / math.sqrt(cos2.size)) if cos2.size > 1 else math.nan


def _g(value: float | None, spec: str = ".3g") -> str:
    """A number, or "n/a" for None."""
    return "n/a" if value is None else format(value, spec)


def _quality_row(row: dict[str, Any]) -> list[str]:
    r_cos, r_var = quality_ratios(row)
    return [str(row["point"]), str(row["distribution"]), str(row["combine"]),
            str(row["num_tangents"]), str(row["n"]),
            f"{row['cos2_mean']:.3g} ± {_cos2_error(row):.2g}", _g(_number(row["cos2_theory"])),
            _g(r_cos), _g(_number(row["var_mean"])), _g(_number(row["var_theory"])), _g(r_var)]


QUALITY_HEADER = ("point", "distribution", "combine", "K", "n", "E[cos²], measured ± s.e.",
                  "E[cos²], theory", "measured / theory", "mean Var[g_i], measured",
                  "mean Var[g_i], theory", "measured / theory")


def _range_text(values: Sequence[float]) -> str:
    return f"{min(values):.3g} to {max(values):.3g} (median {float(np.median(values)):.3g})"


def _quality_sentence(rows: Sequence[dict[str, Any]]) -> str:
    """Measured/theory ranges and how many E[cos²] theories lie within 2 standard errors."""
    pairs = [(quality_ratios(r), r) for r in rows]
    cos = [(c, r) for (c, _), r in pairs if c is not None]
    var = [v for (_, v), _ in pairs if v is not None]
    if not cos and not var:
        return "No setting has a theoretical value to compare with."
    parts = []
    if cos:
        near = sum(abs(r["cos2_mean"] - r["cos2_theory"]) <= 2 * _cos2_error(r) for _, r in cos)
        parts.append(f"E[cos²] measured / theory is {_range_text([c for c, _ in cos])}; the "
                     f"theory lies within 2 standard errors of the measurement in {near} of "
                     f"{len(cos)} settings")
    if var:
        parts.append(f"mean Var[g_i] measured / theory is {_range_text(var)}")
    return "**Summary.** " + "; ".join(parts) + "."


def _quality_setup(summary: dict[str, Any]) -> str:
    rows, cfg = summary["rows"], summary.get("config") or {}
    samples = "/".join(str(m) for m in sorted({int(r["samples"]) for r in rows}))
    n = "/".join(str(v) for v in sorted({int(r["n"]) for r in rows}))
    return (f"n = {n} parameters; M = {samples} estimates per setting on one minibatch of "
            f"{cfg.get('batch_size', '?')}; *init*: at initialisation, *trained*: after "
            f"{cfg.get('train_steps', '?')} backprop SGD steps (η = {cfg.get('train_lr', '?')}).")


def estimator_quality_section(exp_dir: Path) -> list[str]:
    """Markdown body for the estimator-quality experiment: the formulas, one table per model."""
    models, excluded = load_quality(exp_dir)
    if not models and not excluded:
        return []
    lines = [QUALITY_FORMULAS]
    for model, summary in models.items():
        lines += ["", f"### {model}", "", _quality_setup(summary), ""]
        lines += markdown_table(QUALITY_HEADER, [_quality_row(r) for r in summary["rows"]])
        lines += ["", _quality_sentence(summary["rows"])]
    return lines + _excluded_lines(excluded)


# ----------------------------------------------------------------------------- variant sweeps


def run_setting(run: MnistRun | Excluded, key: str, default: Any = None) -> Any:
    """A config value of a run (its summary's ``config``, where variant overrides are)."""
    return (run.summary.get("config") or {}).get(key, default)


def mean_cosine(run: MnistRun) -> float | None:
    """Mean of the run's logged cosines with the exact gradient (None when none was logged)."""
    finite = run.cosine[np.isfinite(run.cosine)]
    return float(finite.mean()) if finite.size else None


BackpropTimes = dict[tuple[int, float | None], float]


def backprop_ms(runs: Iterable[MnistRun]) -> BackpropTimes:
    """ms per step of the complete backprop runs (mean over backprop variants) by (seed, η₀),
    and by (seed, None) over all η₀ of the seed."""
    per: dict[tuple[int, float | None], list[float | None]] = {}
    for r in runs:
        if r.method == "backprop":
            ms = _number(r.summary.get("ms_per_step"))
            for key in ((r.seed, r.learning_rate), (r.seed, None)):
                per.setdefault(key, []).append(ms)
    means = {key: _mean_of(ms) for key, ms in per.items()}
    return {key: ms for key, ms in means.items() if ms is not None}


def variant_stats(seeds: dict[int, MnistRun], bp_ms: BackpropTimes) -> dict[str, Stat | None]:
    """:func:`run_metrics` of one (variant, η₀) over its seeds, with ``vs_backprop`` (step time /
    backprop's step time, same seed and η₀ where run, else its mean over η₀) and ``cosine``
    (:func:`mean_cosine`)."""
    per_seed = []
    for seed, run in sorted(seeds.items()):
        m = run_metrics(run)
        bp = bp_ms.get((seed, run.learning_rate), bp_ms.get((seed, None)))
        m.update(vs_backprop=_ratio(m["ms"], bp), cosine=mean_cosine(run))
        per_seed.append(m)
    return {k: aggregate(m[k] for m in per_seed) for k in per_seed[0]}


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
                f"{_g(growth['cosine'])}× (√(K ratio) = {math.sqrt(k_hi / k_lo):.3g})")
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
        return ["No complete runs.", *_excluded_lines(excluded)]
    bp_ms = backprop_ms(runs)
    table = [(variant, lr, seeds, variant_stats(seeds, bp_ms))
             for variant, by_lr in group_variants(runs).items() for lr, seeds in by_lr.items()]
    every = run_setting(runs[0], "diagnostics_every")
    logged = (f"Cosines with the exact minibatch gradient are logged every {every} steps, by a "
              "computation compiled apart from the timed step." if every else
              "No cosines were logged (`diagnostics_every` unset).")
    lines = [f"{_setup_line(runs)} Backprop step time: the same seed's backprop run at the same "
             f"η₀ (else at any η₀). {logged}", ""]
    lines += markdown_table(K_SWEEP_HEADER, [_k_sweep_row(*row) for row in table])
    sentence = _k_sweep_sentence([(next(iter(seeds.values())), stats)
                                  for _, _, seeds, stats in table])
    return lines + (["", sentence] if sentence else []) + _excluded_lines(excluded)


def _failure(e: Excluded) -> str:
    seed = e.summary.get("seed", "?")
    if e.status == "diverged":
        return f"seed {seed} diverged at step {e.diverged_step}"
    return f"seed {seed} {e.status} at step {e.steps_done} of {e.steps}"


SweepKey = tuple[str, float]


def _failures(excluded: Iterable[Excluded]) -> dict[SweepKey, list[Excluded]]:
    """The runs left out, by (variant, η₀)."""
    out: dict[SweepKey, list[Excluded]] = {}
    for e in excluded:
        key = (run_variant(e.summary), float(e.summary["learning_rate"]))
        out.setdefault(key, []).append(e)
    return out


def best_rates(runs: Sequence[MnistRun], excluded: Sequence[Excluded] = ()
               ) -> dict[str, float]:
    """Per variant, the η₀ with the lowest mean final training loss over seeds, among the η₀
    whose runs all completed (none diverged or was interrupted)."""
    failed = _failures(excluded)
    best = {}
    for variant, by_lr in group_variants(runs).items():
        losses = {lr: aggregate(_number(r.summary.get("final_train_loss"))
                                for r in seeds.values())
                  for lr, seeds in by_lr.items() if (variant, lr) not in failed}
        losses = {lr: s.mean for lr, s in losses.items() if s is not None and s.n}
        if losses:
            best[variant] = min(losses, key=losses.__getitem__)
    return best


@dataclass(frozen=True)
class SweepPoint:
    """One (variant, η₀) of a learning-rate sweep: its complete runs' stats, the failed runs."""

    variant: str
    method: str
    optimizer: str
    lr: float
    stats: dict[str, Stat | None]
    failed: list[Excluded]

    @property
    def usable(self) -> bool:
        """Every run completed, so the point takes part in the choice of the best η₀."""
        return not self.failed and self.stats.get("loss") is not None


def sweep_points(runs: Sequence[MnistRun], excluded: Sequence[Excluded]
                 ) -> dict[SweepKey, SweepPoint]:
    """Every (variant, η₀) with a run, complete or not, in variant then η₀ order."""
    grouped, failed = group_variants(runs), _failures(excluded)
    bp_ms = backprop_ms(runs)
    stats = {(v, lr): variant_stats(seeds, bp_ms) for v, by_lr in grouped.items()
             for lr, seeds in by_lr.items()}
    first: dict[SweepKey, MnistRun | Excluded] = {
        (v, lr): next(iter(seeds.values())) for v, by_lr in grouped.items()
        for lr, seeds in by_lr.items()}
    for key, fails in failed.items():
        first.setdefault(key, fails[0])
    keys = sorted(first, key=lambda k: (natural_key(k[0]), k[1]))
    return {k: SweepPoint(k[0], str(first[k].summary["method"]),
                          str(run_setting(first[k], "optimizer", "sgd")), k[1],
                          stats.get(k, {}), failed.get(k, [])) for k in keys}


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
    lines = [(_setup_line(runs) + " " if runs else "") + "Runs that diverged or did not finish "
             "are shown where they stopped and left out of the means; an η₀ with such a run "
             "cannot be a best η₀. Best η₀: the lowest mean final training loss (mean of the "
             "last 100 steps).", ""]
    lines += markdown_table(SWEEP_HEADER, [_sweep_row(p) for p in points.values()])
    best = best_rates(runs, excluded)
    lines += ["", "**Best η₀ per variant**", ""]
    lines += markdown_table(BEST_HEADER, _best_rows(points, best))
    summary = _sweep_summary(points)
    return lines + (["", summary] if summary else [])


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


# ----------------------------------------------------------------------------- depth sweep


def load_depth_sweep(exp_dir: str | Path) -> dict[str, Any] | None:
    """``exp_dir/depth_sweep.json`` (None when absent), checked for its rows."""
    path = Path(exp_dir) / "depth_sweep.json"
    if not path.exists():
        return None
    result = read_json(path)
    rows = result.get("rows")
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and {"depth", "batch_size", "methods"} <= r.keys() for r in rows):
        raise ResultsError(f"results file {path} has no valid 'rows' (depth, batch_size, "
                           "methods): delete it and rerun the depth sweep")
    return result


def depth_fwd_method(row: dict[str, Any]) -> str:
    """The forward-gradient entry of a depth-sweep row (normal tangents, K = 1, if present)."""
    fwd = [m for m in row["methods"] if m.startswith("fwd")]
    return "fwd-normal-k1" if "fwd-normal-k1" in fwd else fwd[0]


def depth_series(result: dict[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """Per depth at one batch size: R_f, R_b and the memory of both steps (MiB)."""
    rows = sorted((r for r in result["rows"] if r["batch_size"] == batch_size),
                  key=lambda r: r["depth"])

    def get(r, method, *keys):
        v = r["methods"][method]
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return np.nan if v is None else float(v)

    out = {"depth": np.array([r["depth"] for r in rows], float)}
    for label, method in (("f", None), ("b", "backprop")):
        out[f"R_{label}"] = np.array([get(r, method or depth_fwd_method(r), "R") for r in rows])
        for part in ("total", "parameter_sized", "rest"):
            out[f"{label}_{part}"] = np.array(
                [get(r, method or depth_fwd_method(r), "memory", part) for r in rows]) / MIB
    return out


def _depth_row(s: dict[str, np.ndarray], i: int) -> list[str]:
    def fmt(v, digits=2):
        return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"
    return [f"{s['depth'][i]:.0f}", fmt(s["R_f"][i]), fmt(s["R_b"][i]),
            fmt(s["R_f"][i] / s["R_b"][i]), fmt(s["f_total"][i], 1), fmt(s["f_rest"][i], 1),
            fmt(s["b_total"][i], 1), fmt(s["b_rest"][i], 1),
            fmt(s["f_total"][i] / s["b_total"][i])]


DEPTH_HEADER = ["depth", "R_f", "R_b", "R_f/R_b", "fwd peak (MiB)", "fwd rest (MiB)",
                "bp peak (MiB)", "bp rest (MiB)", "fwd/bp peak"]


def _depth_sentence(s: dict[str, np.ndarray], batch_size: int) -> str:
    i0 = 1 if len(s["depth"]) > 1 else 0  # growth is measured from depth 2 (the issue's target)
    grow_f, grow_b = s["f_rest"][-1] / s["f_rest"][i0], s["b_rest"][-1] / s["b_rest"][i0]
    ratio = s["f_total"][-1] / s["b_total"][-1]
    d0, d1 = int(s["depth"][i0]), int(s["depth"][-1])
    paper_f, paper_b = PAPER_DEPTH_SWEEP["R_f"], PAPER_DEPTH_SWEEP["R_b"]
    cheaper = "below" if np.nanmax(s["R_f"] / s["R_b"]) < 1 else "not always below"
    return (f"At batch {batch_size}, from depth {d0} to {d1} the memory beyond parameter-sized "
            f"buffers grows {grow_b:.1f}× for backprop (stored activations) and {grow_f:.2f}× "
            f"for the forward gradient; at depth {d1} the forward-gradient step's total peak is "
            f"{ratio:.2f}× backprop's (the paper reports equal memory for both). R_f ranges "
            f"{np.nanmin(s['R_f']):.2f}–{np.nanmax(s['R_f']):.2f} and R_b "
            f"{np.nanmin(s['R_b']):.2f}–{np.nanmax(s['R_b']):.2f} (paper: R_f {paper_f[0]} → "
            f"{paper_f[1]}, R_b {paper_b[0]} → {paper_b[1]} from 1 to 100 layers); R_f/R_b is "
            f"{cheaper} 1.")


def depth_sweep_section(exp_dir: Path) -> list[str]:
    """Markdown body for the depth sweep: one table per batch size, and a generated summary."""
    result = load_depth_sweep(exp_dir)
    if result is None:
        return []
    cfg = result.get("config", {})
    lines = [f"MLP of width {cfg.get('width', '?')}, depth = number of hidden layers; R = "
             "median step time / median time of f (interleaved rounds); memory from XLA's "
             "analysis of the compiled step (arguments + outputs − donated + temporaries), "
             "split into parameter-sized buffers (parameters, tangents, gradient, update) and "
             "the rest (activations and working set). The batch is an argument, so the data "
             "set never counts."]
    for b in sorted({r["batch_size"] for r in result["rows"]}):
        s = depth_series(result, b)
        lines += ["", f"### batch {b}", ""]
        lines += markdown_table(DEPTH_HEADER, [_depth_row(s, i) for i in range(len(s["depth"]))])
        lines += ["", _depth_sentence(s, b)]
    return lines


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
    Section("estimator_quality", "Estimator quality: cosine and variance vs K, against theory "
            "(beyond the paper)", estimator_quality_section),
    Section("k_sweep", "Multi-tangent forward gradients on the MLP (beyond the paper)",
            k_sweep_section),
    Section("lr_sweep", "Learning-rate sweep per method on the MLP (beyond the paper)",
            lr_sweep_section),
    Section("depth_sweep", "Depth sweep: runtime cost and memory vs MLP depth (paper Figure 6)",
            depth_sweep_section),
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
    write_text_atomic(path, report_markdown(out, preset, command))
    return path

