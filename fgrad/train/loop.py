"""The timed training loop: compiled step calls, logging, evaluation, divergence, checkpoints.

:func:`train_loop` takes built objects only: a compiled multi-step function, its state and
data, an evaluation function, a JSON-lines log and callbacks. Wall time is read after
``block_until_ready`` at call boundaries (per-step times are interpolated inside a call), so
compilation (done ahead of time by the caller) and evaluation are never inside the clock.

Interrupts. Inside the loop SIGINT and SIGTERM are deferred to the next call boundary
(:func:`deferred_interrupts`): the running call finishes, its steps are logged, a checkpoint is
written (when a ``checkpoint`` callback is given) and then :class:`KeyboardInterrupt` is
raised, so an interrupted run loses nothing it computed and resumes from where it stopped.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from fgrad._results import JsonlWriter
from fgrad.train.step import Data, TrainState

RECENT = 100  # the final training loss is the mean of the last RECENT steps


@dataclass
class Position:
    """Where a run stands: what a checkpoint must hold besides the train state.

    Attributes:
      step: training steps done.
      time: cumulative training seconds (the clock runs only inside step calls).
      first_loss: the first step's loss (the divergence test's scale), None before step 1.
      recent: the last :data:`RECENT` training losses.
    """

    step: int = 0
    time: float = 0.0
    first_loss: float | None = None
    recent: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "time": self.time, "first_loss": self.first_loss,
                "recent": list(self.recent)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Position:
        return cls(int(d["step"]), float(d["time"]), d.get("first_loss"), list(d["recent"]))


@dataclass
class LoopResult:
    """What :func:`train_loop` returns.

    Attributes:
      state: the final train state.
      status: ``"complete"`` or ``"diverged"``.
      position: the final :class:`Position` (steps done, training seconds, recent losses).
      diverged_step: the step whose loss diverged, else None.
      final_eval: the evaluation row at the last step (complete runs), else None.
    """

    state: TrainState
    status: str
    position: Position
    diverged_step: int | None = None
    final_eval: dict[str, Any] | None = None


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM (``signum``) after saving what it had."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class _Stop:
    requested: int | None = None


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[_Stop]:
    """Within the block, SIGINT/SIGTERM only set ``stop.requested`` (the signal number); the
    loop checks it at call boundaries. Outside it the previous handlers are restored."""
    stop = _Stop()

    def handler(signum, frame):
        stop.requested = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _diverged(losses: np.ndarray, first: float, factor: float) -> np.ndarray:
    """Indices of non-finite losses or losses beyond ``factor`` × max(|first loss|, 1)."""
    return np.flatnonzero(~(np.abs(losses) <= factor * max(abs(first), 1.0)))


def train_loop(step_fn: Callable[[TrainState, Data], tuple[TrainState, dict[str, Any]]],
               state: TrainState, data: Data, *, steps: int, steps_per_call: int,
               log: JsonlWriter, evaluate: Callable[[TrainState, int, float], dict[str, Any]],
               eval_every: int, divergence_factor: float = 100.0,
               diagnose: Callable[[TrainState, Data], dict[str, Any]] | None = None,
               diag_every: int = 0, start: Position | None = None,
               on_eval: Callable[[Position], None] | None = None,
               checkpoint: Callable[[TrainState, Position], None] | None = None,
               checkpoint_every: int = 0,
               progress: Callable[[Position, float], None] | None = None) -> LoopResult:
    """Runs ``step_fn`` until ``steps`` steps are done, logging every step.

    Rows written to ``log`` (one JSON object per line): ``{"kind": "train", "step", "loss",
    "time"}`` per step (with the step's other measurements, e.g. ``grad_norm``), ``evaluate``'s
    row every ``eval_every`` steps and at the end, and ``{"kind": "diag", "step", ...}``
    (``diagnose``'s values, logged before step ``step``) every ``diag_every`` steps. A loss
    that is non-finite or ``divergence_factor`` × the first loss (at least 1) ends the run as
    ``"diverged"``; only the steps up to it are kept, and the clock is charged only for them
    (the call's time pro rata).

    Args:
      step_fn: the compiled ``multi_step(state, data) -> (state, {"loss": (S,)})``, S =
        ``steps_per_call`` (its state argument may be donated).
      state: the state to start from (at ``start.step``).
      data: the training data.
      steps: total training steps of the run (a multiple of ``steps_per_call``).
      steps_per_call: S.
      log: the run's JSON-lines log (positioned after ``start.step``'s rows).
      evaluate: ``evaluate(state, step, time) -> row``.
      eval_every: evaluate every this many steps (a multiple of S).
      divergence_factor: see above.
      diagnose: optional diagnostics of the next step's estimate.
      diag_every: log diagnostics every this many steps (0: never; a multiple of S).
      start: the position to resume from (default: step 0); updated in place as the loop
        goes, so after an exception it tells what was logged.
      on_eval: called after each intermediate evaluation (e.g. to update the summary).
      checkpoint: ``checkpoint(state, position)``, called every ``checkpoint_every`` steps
        and when an interrupt stops the loop.
      checkpoint_every: see ``checkpoint`` (0: only on interrupts).
      progress: called after every call with the position and the last loss.

    Returns:
      A :class:`LoopResult`.

    Raises:
      Interrupted: (a KeyboardInterrupt) after SIGINT/SIGTERM, once the running call's steps
        are logged and checkpointed.
    """
    pos = start or Position()
    if pos.step == 0:
        log.write(evaluate(state, 0, 0.0))
    with deferred_interrupts() as stop:
        while pos.step < steps:
            if diagnose is not None and diag_every and pos.step % diag_every == 0:
                log.write({"kind": "diag", "step": pos.step + 1,
                           **jax.device_get(diagnose(state, data))})
            t = time.perf_counter()
            state, measured = step_fn(state, data)
            jax.block_until_ready(measured)
            call_s = time.perf_counter() - t
            losses = np.asarray(measured["loss"])  # the host copy after the clock stops
            if pos.first_loss is None:
                pos.first_loss = float(losses[0])
            bad = _diverged(losses, pos.first_loss, divergence_factor)
            keep = losses if not bad.size else losses[: bad[0] + 1]
            # Inside one call, per-step times are interpolated between measured boundaries.
            times = pos.time + call_s * np.arange(1, len(keep) + 1) / steps_per_call
            extra = {k: np.asarray(v) for k, v in measured.items() if k != "loss"}
            log.write_many([{"kind": "train", "step": pos.step + i + 1, "loss": float(v),
                             "time": float(times[i]),
                             **{k: float(e[i]) for k, e in extra.items()}}
                            for i, v in enumerate(keep)])
            pos.step += len(keep)
            pos.time = float(times[-1])
            pos.recent = (pos.recent + keep.tolist())[-RECENT:]
            if progress is not None:
                progress(pos, float(keep[-1]))
            if bad.size:
                return LoopResult(state, "diverged", pos, diverged_step=pos.step)
            if pos.step % eval_every == 0 and pos.step < steps:
                log.write(evaluate(state, pos.step, pos.time))
                if on_eval is not None:
                    on_eval(pos)
            due = checkpoint_every and pos.step % checkpoint_every == 0 and pos.step < steps
            if checkpoint is not None and (due or stop.requested is not None):
                checkpoint(state, pos)
            if stop.requested is not None:
                raise Interrupted(stop.requested)
    final = evaluate(state, pos.step, pos.time)
    log.write(final)
    return LoopResult(state, "complete", pos, final_eval=final)
