"""Damaged results never pass as complete (issue 28): a log with a torn line or a missing step
under a summary that says ``complete`` is reported with file and line, rerun instead of skipped,
and left out of the report and figures; a truncated checkpoint falls back to step 0 with a
message, and that run ends with the numbers of an uninterrupted one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from fgrad._results import is_done, log_damage, read_json
from fgrad.analysis.runs import load_mnist_runs
from fgrad.lab.run.mnist import _restore
from fgrad.train.checkpoint import RunCheckpointer

ROOT = Path(__file__).resolve().parents[1]
RUN = "forward_lr0.0002_seed0"
STEPS = 60  # the log: line 1 the step-0 evaluation, line i + 1 step i, then the last evaluation
ARGS = ["--steps", str(STEPS), "--steps-per-call", "10", "--eval-examples", "100",
        "--seeds", "1", "--method", "forward"]
DAMAGE = {"torn": lambda lines: lines[:30] + [lines[30][:25] + "\n"] + lines[31:],  # step 30
          "missing": lambda lines: lines[:30] + lines[31:]}                           # no 30


def _logreg(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "logreg.py"), *ARGS,
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / f"{RUN}.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> Path:
    if not os.environ.get("FGRAD_MNIST_DIR"):
        pytest.skip("FGRAD_MNIST_DIR is not set (make test sets it)")
    out = tmp_path_factory.mktemp("complete")
    proc = _logreg(out)
    assert proc.returncode == 0, proc.stderr
    return out


def _damaged(complete: Path, tmp_path: Path, case: str) -> Path:
    out = tmp_path / "run"
    shutil.copytree(complete, out)
    log = out / f"{RUN}.jsonl"
    log.write_text("".join(DAMAGE[case](log.read_text().splitlines(keepends=True))))
    return out


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_log_is_reported_and_not_complete(complete, tmp_path, case, capsys):
    summary = complete / f"{RUN}.json"
    assert log_damage(summary, read_json(summary)) is None and is_done(summary)
    out = _damaged(complete, tmp_path, case)
    summary = out / f"{RUN}.json"
    assert read_json(summary)["status"] == "complete"  # the summary alone would pass
    damage = log_damage(summary, read_json(summary))
    assert damage and str(out / f"{RUN}.jsonl") in damage
    if case == "torn":
        assert "line 31 is not valid JSON" in damage
    else:
        assert f"holds {STEPS - 1} training steps" in damage and "the first 30" in damage
    assert not is_done(summary)
    assert f"[damaged] {damage}" in capsys.readouterr().out
    runs, excluded = load_mnist_runs(out)  # the report and figures leave it out
    assert not runs and [e.status for e in excluded] == ["damaged"]
    assert damage in excluded[0].describe()


def test_a_damaged_run_is_rerun_to_the_same_numbers(complete, tmp_path):
    out = _damaged(complete, tmp_path, "torn")
    proc = _logreg(out)
    assert proc.returncode == 0, proc.stderr
    assert "[damaged]" in proc.stdout and "line 31" in proc.stdout and "[skip]" not in proc.stdout
    summary = out / f"{RUN}.json"
    assert log_damage(summary, read_json(summary)) is None
    assert _losses(out) == _losses(complete) and len(_losses(out)) == STEPS


def test_a_truncated_checkpoint_falls_back_to_step_zero(tmp_path, capsys):
    directory = tmp_path / ".ckpt" / RUN
    state = {"w": jnp.arange(100_000.0)}
    RunCheckpointer(directory, "fp").save(5, state, {"position": {"step": 5}, "log_bytes": 0})
    data = max((f for f in directory.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # the array's bytes, halved
    ckpt = RunCheckpointer(directory, "fp")
    assert ckpt.latest_step() == 5  # it still looks like a checkpoint
    assert _restore(ckpt, state, tmp_path / RUN) is None  # → the run starts at step 0
    out = capsys.readouterr().out
    assert out.startswith(f"[damaged] checkpoint {directory} cannot be read")
    assert out.count("\n") == 1 and "starts again from step 0" in out
    assert not directory.exists()  # removed: the fresh run does not meet it again
