"""The training loop on real MNIST: every model × method, logs, determinism, divergence, kills."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fgrad
from fgrad._mnist import load_mnist
from fgrad._results import read_json, read_jsonl
from fgrad.lab.run.mnist import train_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_mnist(mnist_dir)


def _cfg(model, steps, **kw):
    return {"name": "t", "model": model, "learning_rates": [0.05],
            "seeds": [0], "steps": steps, "eval_every": steps, "steps_per_call": 10,
            "eval_examples": 1000, **kw}


def _train_losses(path):
    return [r["loss"] for r in read_jsonl(path) if r["kind"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("model,steps", [("logreg", 100), ("mlp", 60), ("cnn", 4)])
def test_each_model_and_method_trains_and_logs(mnist, tmp_path, model, steps):
    spc = 1 if model == "cnn" else 10
    kw = {"model_kwargs": {"width": 256}} if model == "mlp" else {}
    for method, lr in (("backprop", 0.05), ("forward", 1e-3)):  # forward needs a smaller η
        s = train_run(_cfg(model, steps, steps_per_call=spc, **kw), mnist, method, lr, 0,
                      tmp_path, method)
        losses = _train_losses(tmp_path / f"{method}.jsonl")
        assert s["status"] == "complete" and s["steps_done"] == steps == len(losses)
        assert np.all(np.isfinite(losses))
        assert s["ms_per_step"] > 0 and s["compile_s"] > 0 and s["f_ms"] > 0
        assert s["memory"]["process_peak_rss"] > 0
        assert s["env"]["jax"] == jax.__version__
        evals = [r for r in read_jsonl(tmp_path / f"{method}.jsonl") if r["kind"] == "eval"]
        assert [e["step"] for e in evals] == [0, steps]
        assert 0.0 <= s["final_eval"]["test_acc"] <= 1.0
        if method == "backprop" and model != "cnn":
            assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2


def test_same_seed_same_losses_and_same_start_for_both_methods(mnist, tmp_path):
    cfg = _cfg("logreg", 30)
    for name in ("a", "b"):
        train_run(cfg, mnist, "forward", 0.01, 3, tmp_path, name)
    assert _train_losses(tmp_path / "a.jsonl") == _train_losses(tmp_path / "b.jsonl")
    train_run(cfg, mnist, "backprop", 0.01, 3, tmp_path, "bp")
    # Same seed → same initial parameters and first batch for both methods → same first loss.
    assert _train_losses(tmp_path / "a.jsonl")[0] == _train_losses(tmp_path / "bp.jsonl")[0]


def test_clipped_runs_log_the_estimates_norm_and_unclipped_runs_do_not(mnist, tmp_path):
    cfg = _cfg("logreg", 30)
    train_run({**cfg, "clip_norm": 2.0}, mnist, "forward", 0.01, 3, tmp_path, "clip")
    train_run(cfg, mnist, "forward", 0.01, 3, tmp_path, "plain")
    rows = [r for r in read_jsonl(tmp_path / "clip.jsonl") if r["kind"] == "train"]
    norms = [r["grad_norm"] for r in rows]
    assert len(norms) == 30 and all(n > 0 for n in norms)
    assert any(n > 2.0 for n in norms)  # the clip binds for some steps...
    plain = _train_losses(tmp_path / "plain.jsonl")
    clipped = [r["loss"] for r in rows]
    assert clipped[0] == plain[0] and clipped != plain  # ...so the runs part after the first
    assert all("grad_norm" not in r for r in read_jsonl(tmp_path / "plain.jsonl"))


def test_divergence_is_detected_and_recorded(mnist, tmp_path):
    s = train_run(_cfg("logreg", 200), mnist, "backprop", 1e12, 0, tmp_path, "div")
    assert s["status"] == "diverged"
    losses = _train_losses(tmp_path / "div.jsonl")
    assert len(losses) == s["diverged_step"] < 200
    assert not abs(losses[-1]) <= 100 * losses[0]
    assert read_json(tmp_path / "div.json")["status"] == "diverged"


def test_interrupted_run_keeps_its_log(mnist, tmp_path, monkeypatch):
    from fgrad import _results
    calls = []
    real = _results.JsonlWriter.write_many

    def interrupt_on_third(self, rows):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self, rows)

    monkeypatch.setattr(_results.JsonlWriter, "write_many", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        train_run(_cfg("logreg", 100), mnist, "forward", 0.01, 0, tmp_path, "int")
    s = read_json(tmp_path / "int.json")
    assert s["status"] == "incomplete" and s["steps_done"] == 20
    assert len(_train_losses(tmp_path / "int.jsonl")) == 20


def test_diagnostics_are_logged_for_forward_runs(mnist, tmp_path):
    train_run(_cfg("logreg", 40, diagnostics_every=20), mnist, "forward", 0.01, 0, tmp_path, "d")
    diags = [r for r in read_jsonl(tmp_path / "d.jsonl") if r["kind"] == "diag"]
    assert [d["step"] for d in diags] == [1, 21]
    for d in diags:  # K=1: g = (∇f·v) v, so cos = |∇f·v| / (‖∇f‖‖v‖) ∈ [0, 1] and
        # ‖g‖/‖∇f‖ = |∇f·v| ‖v‖ / ‖∇f‖ ≥ cos (as ‖v‖² ≈ n = 7,850 ≫ 1)
        assert 0.0 < d["cosine"] <= 1.0 and d["norm_ratio"] > d["cosine"]
        assert np.isfinite(d["directional_derivative"])


def test_diagnostics_are_logged_for_activity_runs_and_not_for_backprop(mnist, tmp_path):
    train_run(_cfg("logreg", 40, diagnostics_every=20), mnist, "activity", 0.01, 0, tmp_path, "a")
    diags = [r for r in read_jsonl(tmp_path / "a.jsonl") if r["kind"] == "diag"]
    assert [d["step"] for d in diags] == [1, 21]
    assert all(-1.0 < d["cosine"] < 1.0 and d["norm_ratio"] > 0 for d in diags)
    train_run(_cfg("logreg", 20, diagnostics_every=20), mnist, "backprop", 0.01, 0, tmp_path, "b")
    assert not [r for r in read_jsonl(tmp_path / "b.jsonl") if r["kind"] == "diag"]


def test_killed_experiment_script_keeps_what_it_logged(mnist_dir, tmp_path):
    env = {**os.environ, "FGRAD_MNIST_DIR": str(mnist_dir), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "experiments" / "logreg.py"), "--steps", "100000",
           "--seeds", "1", "--method", "forward", "--steps-per-call", "100", "--eval-every",
           "100000", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = tmp_path / "forward_lr0.0002_seed0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text()) < 2_000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err
    summary = json.loads((tmp_path / "forward_lr0.0002_seed0.json").read_text())
    assert summary["status"] == "incomplete"
    rows = read_jsonl(log)
    assert summary["steps_done"] == sum(r["kind"] == "train" for r in rows) > 0


def _weight_gradient_matmuls(jaxpr, batch: int) -> int:
    """dot_generals contracting over the minibatch axis (size ``batch``), sub-jaxprs included.

    Those are the weight gradients of dense layers, x^T δ: a backward pass has one per layer,
    forward mode (x W and its tangent x V + ẋ W) contracts only feature axes.
    """
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            shape = eqn.invars[0].aval.shape
            n += any(shape[d] == batch for d in lhs_contract)
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                if hasattr(sub, "jaxpr"):
                    n += _weight_gradient_matmuls(getattr(sub.jaxpr, "jaxpr", sub.jaxpr), batch)
                elif hasattr(sub, "eqns"):
                    n += _weight_gradient_matmuls(sub, batch)
    return n


@pytest.mark.parametrize("diagnostics", [False, True])
def test_forward_step_traces_no_backward_pass_unless_diagnostics(diagnostics):
    """An MLP with L = 4 dense layers at batch 8: backprop has L weight-gradient matmuls; the
    forward-gradient step must have none unless diagnostics (which need the exact gradient)
    are switched on in the step's source."""
    from fgrad.train.step import Data, TrainState, make_train_step
    model = fgrad.make_model("mlp", width=16, depth=3)
    layers, batch = 4, 8
    params = fgrad.init_params(model, jax.random.key(0))
    loss_fn = fgrad.cross_entropy_loss(model)
    data = Data(jax.numpy.zeros((32, 28, 28, 1)), jax.numpy.zeros((32,), jax.numpy.int32),
                jax.numpy.zeros((1, 32), jax.numpy.int32))

    def count(source):
        tx = fgrad.make_optimizer(source, 1e-3)
        state = TrainState(params, tx.init(params), jax.numpy.zeros((), jax.numpy.int32))
        jaxpr = jax.make_jaxpr(make_train_step(loss_fn, tx, batch))(state, data).jaxpr
        return _weight_gradient_matmuls(jaxpr, batch)

    assert count(fgrad.backprop_source()) == layers
    assert count(fgrad.forward_gradient_source(0, diagnostics=diagnostics)) == (
        layers if diagnostics else 0)


def test_a_diverged_run_is_charged_only_for_the_steps_it_kept(mnist, tmp_path):
    """A call of 50 steps that diverges at its 2nd step charges 2/50 of the call's time, so the
    diverged run's ms/step is a step's cost (it was ~25× too high when the whole call's time was
    divided by the 2 steps kept)."""
    ok = train_run(_cfg("logreg", 100, steps_per_call=50), mnist, "backprop", 0.01, 0,
                   tmp_path, "ok")
    div = train_run(_cfg("logreg", 100, steps_per_call=50), mnist, "backprop", 1e12, 0,
                    tmp_path, "div")
    assert div["status"] == "diverged" and div["steps_done"] < 50
    assert div["ms_per_step"] < 5 * ok["ms_per_step"], (div["ms_per_step"], ok["ms_per_step"])


def test_progress_is_printed_per_evaluation_without_a_terminal(mnist_dir, tmp_path):
    env = {**os.environ, "FGRAD_MNIST_DIR": str(mnist_dir), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "experiments" / "logreg.py"), "--steps", "40",
           "--seeds", "1", "--method", "forward", "--steps-per-call", "10", "--eval-every", "20",
           "--eval-examples", "1000", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "logreg/forward_lr0.0002_seed0: step 20/40, loss" in proc.stdout
