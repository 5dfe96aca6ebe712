"""Results on disk: one JSON line per logged step, plus a summary JSON per run.

A run ``NAME`` in directory ``D`` writes ``D/NAME.jsonl`` as it goes (flushed every line, so an
interrupted run keeps every step it logged) and ``D/NAME.json``, its summary, whose ``status`` is
``"running"`` until the run ends as ``"complete"``, ``"diverged"`` or ``"incomplete"``
(interrupted). Only ``"complete"`` and ``"diverged"`` runs count as done for a resumed sweep.
"""

from __future__ import annotations

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
    half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def is_done(summary_path: str | os.PathLike, config: dict[str, Any] | None = None) -> bool:
    """True when the summary exists, its run finished (complete or diverged) and, if
    ``config`` is given, it was made with that config (a changed config is rerun)."""
    try:
        summary = read_json(summary_path)
    except ResultsError:
        return False
    if summary.get("status") not in DONE:
        return False
    if config is not None and summary.get("config") != _clean(config):
        print(f"[rerun] {summary_path}: made with another config")
        return False
    return True


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_at is None:
            self._file = open(self.path, "w", buffering=1)
        else:
            self._file = open(self.path, "r+", buffering=1)
            self._file.truncate(resume_at)
            self._file.seek(resume_at)

    def tell(self) -> int:
        """The byte offset after every row written so far (flushed)."""
        self._file.flush()
        return self._file.tell()

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(_clean(row)) + "\n")

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(_clean(r)) + "\n" for r in rows))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
