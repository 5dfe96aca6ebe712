"""Loading results files: the runs an experiment wrote under ``OUT/<experiment>/``.

Everything here reads the files of :mod:`fgrad._results` (summaries, JSONL logs, ``.npz``
arrays) and checks them; a missing or malformed file raises :class:`ResultsError` naming it.
Runs that diverged or did not finish are returned apart as :class:`Excluded`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgrad._results import ResultsError, log_damage, read_json, read_jsonl

MODEL_ORDER = ("logreg", "mlp", "cnn")


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
    damage: str | None = None  # status "damaged": what is wrong with its log

    def describe(self) -> str:
        """One Markdown list item."""
        if self.status == "diverged":
            why = f"diverged (non-finite training loss at step {self.diverged_step})"
        elif self.damage:
            why = f"its summary says complete, but {self.damage}"
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
    eval_step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (m,)
    param_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (m,) ‖θ‖ (nan: absent)

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

    @property
    def machine(self) -> str:
        """The machine that made the run (:func:`machine_of`)."""
        return machine_of(self.summary.get("env") or {})

    @property
    def inputs(self) -> str:
        """The run's input convention (:data:`fgrad._mnist.INPUTS`)."""
        return inputs_of(self.summary.get("config") or {})

    @property
    def init(self) -> str:
        """The run's initialisation (a key of :data:`fgrad._layers.INITS`)."""
        return init_of(self.summary.get("config") or {})


def inputs_of(config: dict[str, Any]) -> str:
    """A run config's input convention; runs made before the key existed trained on x/255."""
    return str(config.get("inputs", "unit"))


def init_of(config: dict[str, Any]) -> str:
    """A run config's initialisation; before the ``init`` key it was the model's own field."""
    return str(config.get("init") or (config.get("model_kwargs") or {}).get("init_scheme")
               or "flax")


def machine_of(env: dict[str, Any]) -> str:
    """A machine's name from a results file's ``env``: the CPU model, vector extension and core
    count (CPU), or the platform and device. Wall times of runs made on different machines are
    not compared (machines of the same kind have differed 2× in speed)."""
    if env.get("platform", "cpu") == "cpu":
        isa = f", {env['cpu_isa']}" if env.get("cpu_isa") else ""
        return f"CPU {env.get('cpu', '?')} ({env.get('cpu_cores', '?')} cores{isa})"
    return f"{str(env.get('platform', '?')).upper()} {env.get('device', '?')}"


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
        cosine=np.array([r["cosine"] for r in diags], np.float64),
        eval_step=np.array([r["step"] for r in evals], np.int64),
        param_norm=np.array([r.get("param_norm", np.nan) for r in evals], np.float64))


def run_summaries(exp_dir: str | Path, pattern: str = "*.json") -> list[tuple[Path, dict]]:
    """(path, summary) of every results summary in ``exp_dir`` matching ``pattern``, sorted."""
    return [(p, read_json(p)) for p in sorted(Path(exp_dir).glob(pattern))]


def load_mnist_runs(exp_dir: str | Path) -> tuple[list[MnistRun], list[Excluded]]:
    """The complete runs of an MNIST experiment folder, and the runs left out (not complete, or
    a summary saying complete over a damaged log: :func:`fgrad._results.log_damage`).

    Raises:
      ResultsError: naming the file, when a summary or a complete run's log is missing or
        malformed.
    """
    runs, excluded = [], []
    for path, summary in run_summaries(exp_dir, "*_lr*_seed*.json"):
        _require(summary, MNIST_KEYS, path)
        damage = log_damage(path, summary)  # (a missing log: the loader's one-line error)
        if damage and path.with_suffix(".jsonl").exists():  # says complete, its log is not
            excluded.append(Excluded(path, "damaged", summary.get("steps_done"),
                                     summary.get("steps"), summary=summary, damage=damage))
        elif summary["status"] == "complete":
            _require(summary, ("ms_per_step", "final_train_loss"), path)
            runs.append(_mnist_run(path, summary))
        else:
            excluded.append(_excluded(path, summary))
    return runs, excluded


def run_setting(run: MnistRun | Excluded, key: str, default: Any = None) -> Any:
    """A config value of a run (its summary's ``config``, where variant overrides are)."""
    return (run.summary.get("config") or {}).get(key, default)


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


QUALITY_KEYS = ("point", "distribution", "combine", "num_tangents", "n", "samples", "cosine",
                "cos2_mean", "cos2_theory", "var_mean", "var_theory")


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
