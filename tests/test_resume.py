"""Mid-run checkpoints: a run killed part-way and rerun with the same command continues from
its last checkpoint, bit-identically to an uninterrupted run, with no duplicated or missing
steps in its log and none of the time it was down in its training time."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fgrad._results import read_jsonl
from fgrad.train.checkpoint import RunCheckpointer, config_fingerprint

ROOT = Path(__file__).resolve().parents[1]
NAME = "forward_lr0.0002_seed0"
STEPS = 8_000


def _cmd(out: Path) -> list[str]:
    # one step per call, so the run lasts seconds and is killed between checkpoints
    return [sys.executable, str(ROOT / "experiments" / "logreg.py"), "--steps", str(STEPS),
            "--seeds", "1", "--method", "forward", "--steps-per-call", "1", "--eval-every",
            "2000", "--checkpoint-every", "1000", "--eval-examples", "1000", "--out", str(out)]


def _env(mnist_dir) -> dict[str, str]:
    return {**os.environ, "FGRAD_MNIST_DIR": str(mnist_dir), "PYTHONUNBUFFERED": "1"}


def _train_rows(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / f"{NAME}.jsonl") if r["kind"] == "train"]


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(mnist_dir, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    done = subprocess.run(_cmd(ref), env=_env(mnist_dir), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(_cmd(cut), env=_env(mnist_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log, ckpt = cut / f"{NAME}.jsonl", cut / ".ckpt" / NAME
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and log.stat().st_size > 150_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted (SIGTERM)" in err
    killed = json.loads((cut / f"{NAME}.json").read_text())
    assert killed["status"] == "incomplete" and 0 < killed["steps_done"] < STEPS
    assert ckpt.is_dir()  # saved at the interrupt (and every 1,000 steps before it)
    logged = len(_train_rows(cut))
    assert logged == killed["steps_done"]

    time.sleep(1.0)  # down time, which the training time must not count
    again = subprocess.run(_cmd(cut), env=_env(mnist_dir), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[resume]" in again.stdout
    summary = json.loads((cut / f"{NAME}.json").read_text())
    assert summary["status"] == "complete" and summary["resumes"] == 1
    assert summary["resumed_from"] == killed["steps_done"]  # the interrupt's checkpoint
    assert not ckpt.exists()  # removed once the run is complete

    rows, ref_rows = _train_rows(cut), _train_rows(ref)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no duplicate, no gap
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]  # bit-identical
    times = np.array([r["time"] for r in rows])
    assert np.all(np.diff(times) >= 0)
    i = killed["steps_done"]  # the step after the resume costs a step, not the down time
    assert times[i] - times[i - 1] < 0.5
    evals = [r["step"] for r in read_jsonl(cut / f"{NAME}.jsonl") if r["kind"] == "eval"]
    assert evals == [0, 2000, 4000, 6000, 8000]
    ref_summary = json.loads((ref / f"{NAME}.json").read_text())
    assert summary["final_eval"]["test_acc"] == ref_summary["final_eval"]["test_acc"]


def test_checkpoint_of_another_config_is_refused(tmp_path):
    import jax.numpy as jnp

    RunCheckpointer(tmp_path, config_fingerprint({"steps": 10})).save(
        5, {"w": jnp.ones(3)}, {"position": {}})
    other = RunCheckpointer(tmp_path, config_fingerprint({"steps": 20}))
    with pytest.raises(ValueError, match="made with another config") as e:
        other.restore({"w": jnp.ones(3)})
    assert "\n" not in str(e.value)


def test_checkpoint_survives_an_option_added_since_at_its_default(tmp_path):
    """A run checkpointed before an option existed (its summary's config lacks the key) resumes
    under code that has the option at its default; a real change still gets the new config."""
    from fgrad.lab.run.mnist import MNIST_DEFAULTS, _started_config

    new = {**MNIST_DEFAULTS, "steps": 100}
    old = {k: v for k, v in new.items() if k not in ("tangents", "rank")}
    path = tmp_path / f"{NAME}.json"
    path.write_text(json.dumps({"status": "incomplete", "config": old}))
    assert _started_config(path, new) == old
    assert config_fingerprint(_started_config(path, new)) == config_fingerprint(old)
    changed = {**new, "steps": 200}
    assert _started_config(path, changed) == changed
    assert _started_config(tmp_path / "absent.json", new) == new
