"""One writer per results folder (issue 28), with real processes and files: a second writer is
refused in one line naming the folder and the holder, the holder's files stay intact, and the
lock of a killed writer (``kill -9``) is taken over with a message, never a hang."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fgrad._lock import LOCK_NAME, folder_lock
from fgrad._results import ResultsError

ROOT = Path(__file__).resolve().parents[1]
# A writer that takes the lock, writes a file, says so and waits (killed by the test).
HOLDER = ("import sys, time; from pathlib import Path; from fgrad._lock import folder_lock\n"
          "with folder_lock(sys.argv[1]):\n"
          "    Path(sys.argv[1], 'mine.txt').write_text('the first writer')\n"
          "    print('locked', flush=True); time.sleep(600)\n")
TINY = ["--steps", "20", "--steps-per-call", "10", "--eval-examples", "100", "--seeds", "1",
        "--method", "forward"]


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _logreg(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "logreg.py"), *TINY,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def mnist():
    if not os.environ.get("FGRAD_MNIST_DIR"):
        pytest.skip("FGRAD_MNIST_DIR is not set (make test sets it)")


def test_a_second_writer_is_refused_then_a_killed_writers_lock_is_taken_over(tmp_path, mnist):
    out = tmp_path / "same"
    first = _holder(out)
    try:
        second = _logreg(out)
        assert second.returncode == 2
        error = second.stderr.strip()
        assert error.count("\n") == 0, error
        assert str(out) in error and f"process {first.pid}" in error
        assert "wait for it to finish, or choose another --out" in error
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "mine.txt"]  # intact
        assert (out / "mine.txt").read_text() == "the first writer"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    t0 = time.perf_counter()
    third = _logreg(out)  # the killed writer's lock: taken over, with a message
    assert third.returncode == 0, third.stderr
    assert f"taking over the lock of process {first.pid}" in third.stdout
    assert "which is gone" in third.stdout
    assert time.perf_counter() - t0 < 240  # ran, did not wait
    assert (out / "forward_lr0.0002_seed0.json").exists()


def test_the_lock_is_released_on_an_exception_and_readers_need_none(tmp_path):
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path):
            raise RuntimeError("a run that fails")
    with folder_lock(tmp_path):  # taken again at once, no takeover message needed
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()}")
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: names no holder


def test_a_held_lock_in_another_process_is_a_one_line_error(tmp_path):
    first = _holder(tmp_path)
    try:
        with pytest.raises(ResultsError) as err:
            with folder_lock(tmp_path):
                pass
        assert "\n" not in str(err.value) and f"process {first.pid}" in str(err.value)
    finally:
        first.kill()
        first.wait()
