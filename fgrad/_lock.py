"""One writer per results folder: an advisory ``fcntl`` lock on ``<folder>/.lock``.

The operating system drops the lock when its process ends in any way (exit, exception,
``kill -9``, a machine restart), so a lock can never be left held; the file's text names the
last holder, so a writer that finds the text of a process that is gone says it takes over.
Readers (the report, ``--figures-only``) take no lock and work while a run writes.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fgrad._results import ResultsError

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(text: str) -> tuple[int | None, str]:
    """(pid, description) of a lock file's text ``pid <N>: <command>``."""
    head, _, command = text.strip().partition(": ")
    try:
        return int(head.split()[1]), command
    except (IndexError, ValueError):
        return None, text.strip()


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Holds ``folder``'s writer lock for the ``with`` block (the folder is created).

    Raises:
      ResultsError: one line, when another process holds it, naming that process and what to
        do (wait for it, or choose another --out).

    Example::

      with folder_lock("results/cpu/mlp"):
          ...  # write runs
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fh = open(path, "a+")  # noqa: SIM115  (held open for the lock's lifetime)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid, command = _holder(fh.read())
        fh.close()
        who = f"process {pid} ({command})" if pid else "another process"
        raise ResultsError(f"{folder} is being written by {who}: wait for it to finish, or "
                           "choose another --out") from None
    fh.seek(0)
    pid, command = _holder(fh.read())
    if pid is not None and pid != os.getpid() and not _alive(pid):
        print(f"[lock] {folder}: taking over the lock of process {pid} ({command}), which is "
              "gone", flush=True)
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}: {' '.join(sys.argv) or 'python'}\n")
    fh.flush()
    try:
        yield
    finally:
        fh.seek(0)
        fh.truncate()  # released: no holder to name
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
