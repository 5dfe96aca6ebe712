"""Results on disk: one JSON line per logged step, plus a summary JSON per run.

A run ``NAME`` in directory ``D`` writes ``D/NAME.jsonl`` as it goes (flushed every line, so an
interrupted run keeps every step it logged) and ``D/NAME.json``, its summary, whose ``status`` is
``"running"`` until the run ends as ``"complete"``, ``"diverged"`` or ``"incomplete"``
(interrupted). Only ``"complete"`` and ``"diverged"`` runs count as done for a resumed sweep.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

DONE = ("complete", "diverged")


class ResultsError(ValueError):
    """A results file is missing or malformed."""


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy/jax scalars to Python, non-finite floats to strings."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a temp file renamed over it, so a reader never sees
    half a file.

    Raises:
      ResultsError: one line, ``cannot write PATH: <reason>; ...``, when the file system refuses
        (full disk, read-only, a file where a folder should be); the temp file is removed.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_error(path, e) from None


def write_error(path: str | os.PathLike, err: OSError) -> ResultsError:
    """The one-line ResultsError for a failed write of ``path``: what the file system said and
    what to do about it."""
    path = Path(path)
    reason = err.strerror or str(err) or type(err).__name__
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        above = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{above} is a file, not a folder" if above else reason
    fix = "free some space or choose another --out" if err.errno in (
        errno.ENOSPC, errno.EDQUOT) else "choose another --out"
    return ResultsError(f"cannot write {path}: {reason}; {fix}")


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Writes ``obj`` as indented JSON, atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(_clean(obj), indent=1) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a summary JSON, raising ResultsError naming the file if missing or malformed."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"results file {path} is missing: run the experiment first") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"results file {path} is not valid JSON ({e.msg} at line {e.lineno}):"
                           " delete it and rerun the experiment") from None
    if not isinstance(obj, dict):
        raise ResultsError(f"results file {path} does not hold a JSON object: delete it and rerun")
    return obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a JSON-lines log; a torn last line (an interrupted write) is dropped."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results file {path} is missing: run the experiment first")
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ResultsError(f"results file {path} line {i + 1} is not valid JSON: delete the "
                               "file and rerun the experiment") from None
    return rows


# Top-level config keys that name, order or place an experiment, only say how often it
# checkpoints (resuming is bit-identical), or list a sweep's rates (each run has its own
# ``learning_rate``, so a sweep can be widened without rerunning the runs it has): changing them
# changes no result, so results made before the change still count as this config's.
NOT_RESULTS = ("title", "order", "group", "report", "results_dir", "checkpoint_every",
               "learning_rates")


def config_changes(old: Any, new: Any, prefix: str = "",
                   defaults: dict[str, Any] | None = None) -> list[str]:
    """The keys (dotted) whose values differ between two JSON-ready configs, as
    ``key: old → new`` (top-level keys of :data:`NOT_RESULTS` left out). A top-level key the
    old config lacks but whose new value is its default (``defaults``) is no change: the option
    was added later, and the old results were made as with its default."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if not prefix and k in NOT_RESULTS:
                continue
            key = f"{prefix}{k}"
            if (not prefix and k not in old and defaults is not None and k in defaults
                    and new[k] == defaults[k]):
                continue
            if k not in old:
                out.append(f"{key}: (none) → {_short(new[k])}")
            elif k not in new:
                out.append(f"{key}: {_short(old[k])} → (none)")
            else:
                out += config_changes(old[k], new[k], f"{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1] or 'config'}: {_short(old)} → {_short(new)}"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_config(summary_path: str | os.PathLike, summary: dict[str, Any],
                 config: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Raises a one-line ResultsError when ``summary`` (read from ``summary_path``) was made
    with another config than ``config`` (see :func:`config_changes` for ``defaults``): its
    results are never overwritten silently."""
    if "config" not in summary:
        return
    changes = config_changes(summary["config"], _clean(config),
                             defaults=None if defaults is None else _clean(defaults))
    if changes:
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise ResultsError(
            f"{summary_path} holds results of another config ({'; '.join(changes[:3])}{more}):"
            " pass --force (make: FORCE=1) to overwrite them, or choose another --out to keep"
            " them")


def is_done(summary_path: str | os.PathLike, config: dict[str, Any] | None = None,
            defaults: dict[str, Any] | None = None) -> bool:
    """True when the summary exists and its run finished (complete or diverged); a
    ``complete`` run whose log is damaged (:func:`log_damage`) is not done, with a message.

    Raises:
      ResultsError: one line, when ``config`` is given and the summary (finished or not) was
        made with another config (:func:`check_config`); a caller that means to overwrite it
        (``--force``) does not ask.
    """
    try:
        summary = read_json(summary_path)
    except ResultsError:
        return False
    if config is not None:
        check_config(summary_path, summary, config, defaults)
    damage = log_damage(summary_path, summary)
    if damage:
        print(f"[damaged] {damage}: the run does not count as complete; running it again",
              flush=True)
        return False
    return summary.get("status") in DONE


def log_damage(summary_path: str | os.PathLike, summary: dict[str, Any]) -> str | None:
    """Why a run whose summary says ``complete`` cannot count as complete, or None.

    An MNIST run (config kind ``"mnist"``) logs one ``{"kind": "train", "step": i, ...}`` line
    per step in the ``.jsonl`` beside its summary; it is complete only if every line of that log
    parses and it holds each step 1..``steps`` exactly once. Other kinds are not checked here.

    Returns:
      One line naming the file and the first damaged line, or the missing steps.
    """
    log = Path(summary_path).with_suffix(".jsonl")
    steps = summary.get("steps")
    kind = (summary.get("config") or {}).get("kind")
    if summary.get("status") != "complete" or not isinstance(steps, int) or kind != "mnist":
        return None
    if not log.exists():
        return f"{log} is missing"
    seen: set[int] = set()
    with log.open() as fh:
        for i, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return f"{log} line {i} is not valid JSON"
            if isinstance(row, dict) and row.get("kind") == "train":
                step = row.get("step")
                if step in seen:
                    return f"{log} line {i} repeats step {step}"
                seen.add(step)
    missing = [i for i in range(1, steps + 1) if i not in seen]
    if missing or len(seen) != steps:
        return (f"{log} holds {len(seen)} training steps, not the {steps} of a complete run "
                f"({len(missing)} missing, the first {missing[0] if missing else '-'})")
    return None


class JsonlWriter:
    """Appends one JSON object per line and flushes it, so a killed run keeps what it logged.

    Args:
      path: the log file.
      resume_at: None starts a new file; a byte offset (:meth:`tell` of an earlier writer)
        keeps the file's first ``resume_at`` bytes, drops the rest (rows logged after the
        checkpoint being resumed from) and appends after them.
    """

    def __init__(self, path: str | os.PathLike, resume_at: int | None = None):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume_at is None:
                self._file = open(self.path, "w", buffering=1)
            else:
                self._file = open(self.path, "r+", buffering=1)
                self._file.truncate(resume_at)
                self._file.seek(resume_at)
        except OSError as e:
            raise write_error(self.path, e) from None

    def tell(self) -> int:
        """The byte offset after every row written so far (flushed)."""
        try:
            self._file.flush()
        except OSError as e:
            raise write_error(self.path, e) from None
        return self._file.tell()

    def write(self, row: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(_clean(row)) + "\n")
        except OSError as e:
            raise write_error(self.path, e) from None

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        try:
            self._file.write("".join(json.dumps(_clean(r)) + "\n" for r in rows))
            self._file.flush()
        except OSError as e:
            raise write_error(self.path, e) from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as e:
            raise write_error(self.path, e) from None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.close()
        except ResultsError:
            if exc_type is None:  # else the error already on its way (an interrupt) wins
                raise


def best_learning_rate(summaries: list[dict[str, Any]], seeds: list[int]) -> float | None:
    """The learning rate whose runs (of ``seeds``) end at the lowest mean final training loss;
    a rate with a diverged, unfinished or missing run of those seeds is not a candidate.

    The one selection rule of a learning-rate sweep (``best_rate_seeds`` in an MNIST config):
    the runner runs the extra seeds at this rate and the report marks it. It reads training
    losses only, never the test set.

    Args:
      summaries: run summaries of one variant (``learning_rate``, ``seed``, ``status``,
        ``final_train_loss``).
      seeds: the sweep's seeds.

    Returns:
      The best η₀, or None when no rate has every seed complete.
    """
    by_rate: dict[float, dict[int, float]] = {}
    for s in summaries:
        loss = s.get("final_train_loss")
        if s.get("status") == "complete" and loss is not None and math.isfinite(loss):
            by_rate.setdefault(float(s["learning_rate"]), {})[int(s["seed"])] = float(loss)
    means = {lr: sum(v[k] for k in seeds) / len(seeds) for lr, v in by_rate.items()
             if all(k in v for k in seeds)}
    return min(means, key=lambda lr: (means[lr], lr)) if means else None
