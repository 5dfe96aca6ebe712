"""The paper's metrics (Baydin et al. 2022, Section 5), from loaded runs; seeds aggregated.

* ``T(f)``: median time of one loss evaluation on one batch. Every run times f after training
  (``f_ms`` of its summary); a section uses ONE T(f) per (model, batch): the median over its
  runs (:func:`shared_f_ms`), so that R_f / R_b equals the ratio of the step times.
* ``R_f = T(forward-gradient step) / T(f)``, ``R_b = T(backprop step) / T(f)``, from each run's
  step time :func:`step_ms` (the median over its compiled calls of the call's seconds / S, a
  median as the benchmark's and T(f)'s are: a few slow calls, e.g. while the OS or a background
  checkpoint write takes a core, do not move it) and the shared T(f).
* ``T_b``: wall time at which backprop's training loss, smoothed by a trailing running mean of
  :data:`SMOOTH_WINDOW` steps, first reaches its own minimum (its "best loss"); ``T_f``: the
  wall time at which forward gradient's smoothed loss first falls to that value, for the same
  seed (both methods of a seed start from the same parameters and see the same batches).
* Uneven wall times (:func:`wall_time_evenness` above :data:`UNEVEN`): T_f, T_b and
  T_f/T_b include a shared machine's slowdowns; ``T_f/T_b (medians)`` is the estimate to read.

Values are the mean ± standard deviation (population, ddof = 0) over seeds (:func:`aggregate`);
runs that diverged or did not finish are left out of every mean.

Beyond the paper: MNIST runs may be tagged with a ``variant`` (a method with config overrides,
e.g. K tangents or Adam); runs are grouped by variant, which defaults to the method, so
experiments without variants read as before. Also the metrics of the estimator-quality and
learning-rate sweeps (the depth sweep's are in :mod:`fgrad.analysis.depth_sweep`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fgrad._results import best_learning_rate
from fgrad.analysis.runs import Excluded, MnistRun, _number, run_setting, run_variant

SMOOTH_WINDOW = 100
METHODS = ("forward", "backprop")  # the paper's comparison (fgrad._transforms.SOURCES has all)
METHOD_LABELS = {"forward": "forward gradient", "backprop": "backprop",
                 "backprop_noise": "backprop + forward-gradient noise"}
MIB = 2.0**20
UNEVEN = 1.1  # a run's mean step over its median step above this: its wall times are uneven


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


def steps_to_reach(run: MnistRun, target: float, window: int = SMOOTH_WINDOW) -> float:
    """The first step at which the run's smoothed loss is ≤ ``target``; inf if it never is."""
    steps, _, s = smoothed_loss(run, window)
    hit = np.flatnonzero(s <= target)
    return float(steps[hit[0]]) if hit.size else math.inf


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


def step_ms(run: MnistRun) -> float | None:
    """A run's step time in ms: the median over its compiled calls (ending at steps S, 2S, ...)
    of call time / S; the summary's mean ``ms_per_step`` for a log of fewer than two calls."""
    s = max(1, int(run.summary.get("steps_per_call") or 1))
    ends = run.time[s - 1::s]
    if len(ends) < 2:
        return _number(run.summary.get("ms_per_step"))
    return float(1e3 * np.median(np.diff(np.concatenate([[0.0], ends]))) / s)


def wall_time_evenness(run: MnistRun) -> float | None:
    """A run's mean step time (its training wall time / steps) over its median step time
    (:func:`step_ms`): about 1 on a quiet machine, above :data:`UNEVEN` where the machine was
    shared during part of the run. Its pair's T_f, T_b and T_f/T_b then include those
    slowdowns; the medians (step times, R_f, R_b) do not, and ``T_f/T_b (medians)`` =
    steps_f/steps_b · R_f/R_b estimates what a quiet machine would have measured."""
    median = step_ms(run)
    if median is None or not run.time.size or not run.step.size:
        return None
    return _ratio(1e3 * float(run.time[-1]) / float(run.step[-1]), median)


def run_metrics(run: MnistRun, f_ms: float | None = None) -> dict[str, float | None]:
    """One run's ``ms`` per step, ``f_ms`` (T(f): ``f_ms`` if given, the section's shared one,
    else the run's own), ``R`` = ms / f_ms, final training ``loss``, final test ``acc``, ``mem``
    (MiB, XLA's estimate for one step beyond the training set), ``dev`` (MiB, device peak)."""
    s = run.summary
    mem = s.get("memory") or {}
    ms = step_ms(run)
    f_ms = f_ms if f_ms is not None else _number(s.get("f_ms"))
    return {"ms": ms, "f_ms": f_ms, "R": _ratio(ms, f_ms), "evenness": wall_time_evenness(run),
            "loss": _number(s.get("final_train_loss")),
            "acc": _number((s.get("final_eval") or {}).get("test_acc")),
            "mem": _ratio(_step_memory(mem), MIB),
            "dev": _ratio(_number(mem.get("device_peak")), MIB)}


def _method_metrics(run: MnistRun, method: str, f_ms: float | None
                    ) -> dict[str, float | None]:
    """:func:`run_metrics` keyed by method: ``ms_forward``, ``R_f``, ``loss_forward``, ..."""
    return {f"R_{method[0]}" if k == "R" else f"{k}_{method}": v
            for k, v in run_metrics(run, f_ms).items()}


def seed_metrics(forward: MnistRun | None, backprop: MnistRun | None,
                 window: int = SMOOTH_WINDOW, f_ms: float | None = None
                 ) -> dict[str, float | None]:
    """Every metric of one seed from its complete runs (either may be None).

    Keys: ``f_ms`` (the shared T(f) when given, else the mean of both runs' own),
    ``ms_forward``, ``ms_backprop``, ``R_f``, ``R_b``,
    ``R_f/R_b`` (= ms_forward / ms_backprop), ``target`` (backprop's best smoothed loss),
    ``T_f``, ``T_b``, ``T_f/T_b`` (inf when forward gradient never reaches the target),
    ``step_f``, ``step_b`` (the steps at which each first reaches it), ``step_f/step_b``,
    ``T_f/T_b_bound`` (forward's whole training time over T_b: the bound when it never reaches
    it), ``uneven`` and ``T_f/T_b (medians)`` (:func:`wall_time_evenness`), ``cross_machine``
    (1 when the two runs ran on different machines: then the ratios of wall times are None);
    ``loss_*``, ``acc_*``, ``mem_*`` (MiB, XLA's estimate for one compiled step), ``dev_*``
    (MiB, device allocator peak).
    """
    m: dict[str, float | None] = {}
    for method, run in (("forward", forward), ("backprop", backprop)):
        if run is not None:
            m.update(_method_metrics(run, method, f_ms))
    m["f_ms"] = _mean_of([m.get("f_ms_forward"), m.get("f_ms_backprop")])
    # From the two step times themselves (each run's T(f) differs a little, so R_f / R_b of
    # two runs would not agree with the step times printed beside it).
    m["R_f/R_b"] = _ratio(m.get("ms_forward"), m.get("ms_backprop"))
    if forward is not None and backprop is not None:
        m["target"] = best_loss(backprop, window)
        m["T_b"] = time_to_reach(backprop, m["target"], window)
        m["T_f"] = time_to_reach(forward, m["target"], window)
        m["T_f/T_b"] = _ratio(m["T_f"], m["T_b"])
        m["step_f"] = steps_to_reach(forward, m["target"], window)
        m["step_b"] = steps_to_reach(backprop, m["target"], window)
        m["step_f/step_b"] = _ratio(m["step_f"], m["step_b"])
        # forward never reached it: T_f/T_b is at least its whole training time over T_b
        m["T_f/T_b_bound"] = _ratio(float(forward.time[-1]), m["T_b"])
        m["cross_machine"] = float(forward.machine != backprop.machine)
        evenness = [m.get("evenness_forward"), m.get("evenness_backprop")]
        m["uneven"] = float(any(e is not None and e > UNEVEN for e in evenness))
        m["T_f/T_b (medians)"] = (None if m["R_f/R_b"] is None or m["step_f/step_b"] is None
                                  else m["step_f/step_b"] * m["R_f/R_b"])
        if m["cross_machine"]:  # wall times of two machines: not compared
            m.update({k: None for k in ("T_f/T_b", "T_f/T_b_bound", "R_f/R_b", "f_ms",
                                      "T_f/T_b (medians)")})
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


def shared_f_ms(runs: Iterable[MnistRun]) -> Stat | None:
    """The one T(f) of a set of runs of the same model and batch: the median of their own
    measurements (``mean`` holds the median), with the std over runs and their count."""
    runs = list(runs)  # iterated twice
    vals = [v for r in runs if (v := _number(r.summary.get("f_ms"))) is not None]
    if not vals or len({r.machine for r in runs}) > 1:  # one T(f) per machine: each run's own
        return None
    return Stat(float(np.median(vals)), float(np.std(vals)), len(vals), 0)


def f_protocol(runs: Iterable[MnistRun]) -> str:
    """How the runs timed f: "S evaluations per compiled call" (as their steps ran), or one
    call per evaluation for runs made before that protocol (their summary lacks ``f_timing``)."""
    runs = list(runs)  # iterated twice
    scans = sorted({int(t["scan_steps"]) for r in runs
                    if isinstance(t := r.summary.get("f_timing"), dict) and "scan_steps" in t})
    old = sum(not isinstance(r.summary.get("f_timing"), dict) for r in runs)
    parts = []
    if scans:
        parts.append(f"{'/'.join(map(str, scans))} evaluations of f per compiled call, as the "
                     "steps ran")
    if old:
        parts.append(f"one jitted call per evaluation ({old} run(s) made before T(f) was timed "
                     "as the steps run)")
    return "; ".join(parts)


def f_line(runs: Sequence[MnistRun]) -> str:
    """The sentence stating a section's one T(f): its value, spread, count and protocol."""
    shared = shared_f_ms(runs)
    machines = sorted({r.machine for r in runs})
    if shared is None and len(machines) > 1:
        return (f"T(f): each run's own ({f_protocol(runs)}): the runs were made on "
                f"{len(machines)} machines ({'; '.join(machines)}), so each R compares a step "
                "with f on its own machine, and no ratio of wall times or step times is given "
                "between runs made on different machines.")
    if shared is None:
        return ""
    return (f"T(f) = {shared.mean:.4g} ms: the median of the {shared.n} runs' measurements "
            f"(std {shared.std:.2g} ms; {f_protocol(runs)}), one value for every R of this "
            "section, so ratios of R are ratios of step times.")


def lr_stats(seeds: dict[int, dict[str, MnistRun]], window: int = SMOOTH_WINDOW,
             f_ms: Stat | None = None) -> dict[str, Stat | None]:
    """Every metric of one learning rate, aggregated over its seeds; ``f_ms``: the section's
    shared T(f) (:func:`shared_f_ms`), used for R_f and R_b and reported as T(f)."""
    shared = None if f_ms is None else f_ms.mean
    per_seed = [seed_metrics(r.get("forward"), r.get("backprop"), window, shared)
                for _, r in sorted(seeds.items())]
    keys = {k for m in per_seed for k in m}
    out = {k: aggregate(m.get(k) for m in per_seed) for k in keys}
    if f_ms is not None:
        out["f_ms"] = f_ms
    ms_f, ms_b, ratio = out.get("ms_forward"), out.get("ms_backprop"), out.get("R_f/R_b")
    if ms_f is not None and ms_b is not None and ratio is not None:
        # the ratio of the mean step times printed beside it (± the seeds' spread of the ratio)
        out["R_f/R_b"] = Stat(ms_f.mean / ms_b.mean, ratio.std, ratio.n, ratio.missed)
    return out


def quality_ratios(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """(E[cos²] measured / theory, mean Var[g_i] measured / theory) of one row (None: no
    theory)."""
    return (_ratio(_number(row["cos2_mean"]), _number(row["cos2_theory"])),
            _ratio(_number(row["var_mean"]), _number(row["var_theory"])))


def mean_cosine(run: MnistRun) -> float | None:
    """Mean of the run's logged cosines with the exact gradient (None when none was logged)."""
    finite = run.cosine[np.isfinite(run.cosine)]
    return float(finite.mean()) if finite.size else None


BackpropTimes = dict[tuple[int, float | None], float]


def backprop_ms(runs: Iterable[MnistRun]) -> BackpropTimes:
    """:func:`step_ms` of complete backprop runs (variants averaged) by (seed, η₀), (seed, None)."""
    per: dict[tuple[int, float | None], list[float | None]] = {}
    for r in runs:
        if r.method == "backprop":
            ms = step_ms(r)
            for key in ((r.seed, r.learning_rate), (r.seed, None)):
                per.setdefault(key, []).append(ms)
    means = {key: _mean_of(ms) for key, ms in per.items()}
    return {key: ms for key, ms in means.items() if ms is not None}


def variant_stats(seeds: dict[int, MnistRun], bp_ms: BackpropTimes,
                  f_ms: float | None = None) -> dict[str, Stat | None]:
    """:func:`run_metrics` of one (variant, η₀) over its seeds (``f_ms``: the shared T(f)), with
    ``vs_backprop`` (step time / backprop's step time, same seed and η₀ where run, else its mean
    over η₀) and ``cosine`` (:func:`mean_cosine`)."""
    per_seed = []
    for seed, run in sorted(seeds.items()):
        m = run_metrics(run, f_ms)
        bp = bp_ms.get((seed, run.learning_rate), bp_ms.get((seed, None)))
        m.update(vs_backprop=_ratio(m["ms"], bp), cosine=mean_cosine(run))
        per_seed.append(m)
    return {k: aggregate(m[k] for m in per_seed) for k in per_seed[0]}


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
    """Per variant, the η₀ the runner chose (:func:`fgrad._results.best_learning_rate`): the
    lowest mean final training loss over the sweep's seeds (the config's ``seeds``; the extra
    ``best_rate_seeds`` run only at the best η₀), among the η₀ whose sweep runs all completed."""
    summaries: dict[str, list[dict]] = {}
    for r in [*runs, *excluded]:
        summaries.setdefault(run_variant(r.summary), []).append(r.summary)
    best = {}
    for variant in group_variants(runs):
        seeds = [int(k) for k in summaries[variant][0].get("config", {}).get("seeds", [])]
        seeds = seeds or sorted({int(s["seed"]) for s in summaries[variant]})
        lr = best_learning_rate(summaries[variant], seeds)
        if lr is not None:
            best[variant] = lr
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
    shared = shared_f_ms(runs)
    f_ms = None if shared is None else shared.mean
    stats = {(v, lr): variant_stats(seeds, bp_ms, f_ms) for v, by_lr in grouped.items()
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
