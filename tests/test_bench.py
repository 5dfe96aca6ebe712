"""The step benchmark and the depth sweep: they run end to end, their numbers are consistent,
and fgrad's XLA flags leave gradients unchanged."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgrad._models import cross_entropy_loss, init_params, make_model
from fgrad._xla_flags import FGRAD_COMPILER_OPTIONS, FGRAD_XLA_FLAGS, configure_xla_flags
from fgrad.lab.run.bench import case_ratios
from fgrad.lab.run.depth_sweep import memory_breakdown, run_depth_sweep, scan_steps_for
from fgrad.lab.timing import device_slug, method_from_name, time_interleaved

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_writes_json_and_markdown(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "bench.py"), "--preset", "quick", "--models",
           "logreg", "--loops", "python", "scan", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (json_path,) = tmp_path.glob("*.json")
    result = json.loads(json_path.read_text())
    assert json_path.stem == result["device_slug"]
    assert result["env"]["jax"] and "xla_cpu_scheduler_type" in result["env"]["xla_flags"]
    (case,) = result["cases"]
    assert (case["model"], case["batch_size"]) == ("logreg", 64)
    assert set(case["methods"]) == {"f", "backprop", "fwd-normal-k1", "fwd-rademacher-k1",
                                    "fwd-lowrank-normal-k1-r1", "sample-normal-k1",
                                    "sample-rademacher-k1", "sample-lowrank-normal-k1-r1"}
    for name, row in case["methods"].items():
        assert row["ms"] > 0 and set(row["time"]) == {"python", "scan"}, name
        assert row["flops"] > 0 and row["gflops_per_s"] > 0, name
        assert row["memory"]["peak_estimate"] > 0 and row["compile_s"]["python"] > 0, name
    # ratios agree with the times beside them (their size is the benchmark's to report: a
    # 2-round quick run of logistic regression cannot order f and backprop reliably)
    times = {k: row["ms"] for k, row in case["methods"].items()}
    assert case["ratios"]["backprop"]["R_b"] == pytest.approx(times["backprop"] / times["f"])
    fwd = case["ratios"]["fwd-normal-k1"]
    assert {"R_f", "fwd_over_bp", "sampling_share"} <= set(fwd)
    assert 0 < fwd["sampling_share"] < 5
    low = case["ratios"]["fwd-lowrank-normal-k1-r1"]
    assert {"R_f", "fwd_over_bp", "sampling_share", "flops_over_bp"} <= set(low)
    assert low["flops_over_bp"] < fwd["flops_over_bp"]  # no m × n tangent product
    assert case["loop_check"]["backprop"]["training_over_fastest"] >= 1
    assert case["process_peak_rss"] > 0
    md = json_path.with_suffix(".md").read_text()
    assert "| logreg | 64 |" in md and "fwd-normal-k1" in md and "jax " in md
    assert "fwd-lowrank-normal-k1-r1" in md and "FLOP vs bp" in md
    assert "Python loop vs lax.scan" in md


def test_depth_sweep_backprop_memory_grows_with_depth_forward_stays_flat(tmp_path):
    cfg = {"width": 64, "depths": [1, 2], "batch_sizes": [8], "rounds": 1, "min_round_s": 0.0,
           "warmup": 0, "methods": ["f", "backprop", "fwd-normal-k1"],
           "compiler_options": FGRAD_COMPILER_OPTIONS}
    path = run_depth_sweep(cfg, tmp_path, isolate=False, log=lambda s: None)
    result = json.loads(path.read_text())
    rows = {r["depth"]: r for r in result["rows"]}
    mem = {d: {n: rows[d]["methods"][n]["memory"] for n in ("backprop", "fwd-normal-k1")}
           for d in rows}
    bp_growth = mem[2]["backprop"]["rest"] - mem[1]["backprop"]["rest"]
    fwd_growth = mem[2]["fwd-normal-k1"]["rest"] - mem[1]["fwd-normal-k1"]["rest"]
    # Backprop keeps each layer's activations (8 × 64 floats and a mask) for the backward pass;
    # forward mode only ever holds the current layer's.
    assert bp_growth >= 8 * 64 * 4
    assert bp_growth > fwd_growth
    for d in rows:
        assert rows[d]["R_f"] > 0 and rows[d]["R_b"] > 0
        for m in mem[d].values():
            assert m["total"] == m["parameter_sized"] + m["rest"]
            assert m["parameter_copies"] >= 1  # at least the parameters themselves
    assert (tmp_path / "depth_sweep.md").read_text().count("\n| 8 |") == 2


def test_depth_sweep_scans_short_steps_and_times_long_ones_one_per_call():
    assert scan_steps_for(0.01, 50) == 50  # capped
    assert scan_steps_for(0.02, 50) == 25  # ~0.5 s per call
    assert scan_steps_for(0.049, 50) == 10
    assert scan_steps_for(0.05, 50) == 1 and scan_steps_for(0.4, 50) == 1


def test_fgrad_xla_flags_leave_cnn_gradients_unchanged():
    model = make_model("cnn")
    params = init_params(model, jax.random.key(0))
    loss = cross_entropy_loss(model)
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1), jnp.float32)
    y = jnp.arange(4, dtype=jnp.int32)
    grad = jax.jit(jax.grad(loss))
    plain = grad.lower(params, x, y).compile()(params, x, y)
    tuned = grad.lower(params, x, y).compile(FGRAD_COMPILER_OPTIONS)(params, x, y)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(tuned)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())


def test_configure_xla_flags_adds_missing_flags_only():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type= --xla_foo=1"}
    out = configure_xla_flags(env)
    assert out == env["XLA_FLAGS"]
    assert "--xla_cpu_experimental_ynn_fusion_type= " in out  # the user's value is kept
    assert out.count("xla_cpu_experimental_ynn_fusion_type") == 1
    assert all(f.split("=")[0] in out for f in FGRAD_XLA_FLAGS)
    assert configure_xla_flags({"FGRAD_XLA_FLAGS": "0"}) == ""
    assert configure_xla_flags({}).split() == list(FGRAD_XLA_FLAGS)


def test_time_interleaved_rotates_and_limits_slow_callables():
    calls = []
    runs = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    out = time_interleaved(runs, {"a": 1, "b": 2, "c": 1}, rounds=3, min_round_s=0.0,
                           warmup=1)
    assert {n: len(v) for n, v in out.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[-9:] == list("abcbcacab")  # each round starts one callable later
    slow = time_interleaved({"s": lambda: __import__("time").sleep(0.02), "f": lambda: None},
                            {"s": 1, "f": 1}, rounds=4, min_round_s=0.0, warmup=0,
                            max_call_s=0.01)
    assert len(slow["s"]) == 1 and len(slow["f"]) == 4


def test_ratios_breakdown_names_and_slug():
    per = {"f": {"kind": "f", "source": None, "ms": 2.0},
           "backprop": {"kind": "step", "source": "backprop", "ms": 6.0},
           "fwd-normal-k1": {"kind": "step", "source": "forward", "ms": 8.0},
           "sample-normal-k1": {"kind": "sample", "source": None, "ms": 2.0}}
    r = case_ratios(per)
    assert r["backprop"]["R_b"] == 3.0
    assert r["fwd-normal-k1"] == {"R_f": 4.0, "fwd_over_bp": 8 / 6, "sampling_share": 0.25}
    m = memory_breakdown({"peak_estimate": 1000}, {"peak_estimate": 700}, 64, 32, 400)
    assert (m["rest"], m["parameter_sized"], m["parameter_copies"]) == (600, 400, 1.0)
    assert method_from_name("fwd-rademacher-k4").num_tangents == 4
    low = method_from_name("sample-lowrank-rademacher-k2-r3")
    assert (low.kind, low.tangents, low.distribution, low.num_tangents, low.rank) == \
        ("sample", "low_rank", "rademacher", 2, 3)
    assert method_from_name("fwd-normal-k1").tangents == "iid"
    for bad in ("fwd-lowrank-normal-k1", "fwd-normal-k1-r2", "fwd-lowrank-normal-k1-r0"):
        with pytest.raises(ValueError, match="unknown benchmark method"):
            method_from_name(bad)
    assert method_from_name("backprop").source == "backprop"
    act = method_from_name("activity-rademacher-k2")
    assert (act.kind, act.source, act.distribution, act.num_tangents) == \
        ("step", "activity", "rademacher", 2)
    for bad in ("fwd-uniform-k1", "activity-normal-k0", "activity-lowrank-normal-k1-r1"):
        with pytest.raises(ValueError, match="unknown benchmark method"):
            method_from_name(bad)
    env = {"platform": "cpu", "cpu": "AMD EPYC 7B13 64-Core Processor", "cpu_cores": 2}
    assert device_slug(env) == "cpu-amd-epyc-7b13-2c"
    assert device_slug({"platform": "cpu", "cpu": "AMD EPYC", "cpu_cores": 2}) == \
        "cpu-amd-epyc-2c"
    assert device_slug({"platform": "cpu", "cpu": "AMD EPYC", "cpu_isa": "avx2",
                        "cpu_cores": 2}) == "cpu-amd-epyc-avx2-2c"
    assert device_slug({"platform": "gpu", "device": "NVIDIA H100 80GB HBM3"}) == \
        "gpu-nvidia-h100-80gb-hbm3"


def test_f_is_timed_on_the_minibatches_the_steps_gather():
    # one protocol: each timed evaluation of f gathers the next step's minibatch from the data
    # set as train_step does, so T(f) and the step times count the same work
    from fgrad.lab.timing import compile_f
    from fgrad.train.step import batch_at, synthetic_data

    model = make_model("logreg")
    params = init_params(model, jax.random.key(0))
    loss = cross_entropy_loss(model)
    data = synthetic_data(8, seed=1, num_examples=40)
    assert data.images.shape == (40, 28, 28, 1) and sorted(data.perms[0].tolist()) == list(
        range(40))
    _, compiled = compile_f(loss, params, data, 8, scan_steps=3)
    got = compiled(params, data, jnp.asarray(2, jnp.int32))
    want = [loss(params, *batch_at(jnp.asarray(s), data, 8)) for s in (2, 3, 4)]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    assert len({float(w) for w in want}) == 3  # three different minibatches


def test_step_memory_leaves_the_data_set_out():
    from fgrad.lab.timing import compile_method, memory
    from fgrad.train.step import data_bytes, synthetic_data

    model = make_model("logreg")
    params = init_params(model, jax.random.key(0))
    small = synthetic_data(16, num_examples=16)
    big = synthetic_data(16, num_examples=4096)
    m_small, m_big = (memory(compile_method(method_from_name("backprop"),
                                            cross_entropy_loss(model), params, d, 16).compiled,
                             data_bytes(d)) for d in (small, big))
    assert m_big["excluded"] - m_small["excluded"] == (4096 - 16) * (784 * 4 + 4 + 4)
    assert m_big["argument"] == m_small["argument"]
    assert m_big["peak_estimate"] == m_small["peak_estimate"]


def test_conv_parts_time_each_convolution_and_rewrites_match_xla():
    from fgrad.analysis.bench import _conv_lines
    from fgrad.lab.build import build_model
    from fgrad.lab.conv_parts import PARTS, time_conv_parts

    built = build_model("cnn", {}, jax.random.key(0))
    cfg = {"rounds": 1, "min_round_s": 0.0, "warmup": 0, "case_budget_s": None}
    convs = time_conv_parts(built.module, built.params, 2, cfg)
    # the CNN's four convolutions, three distinct: 28×28×1, 28×28×64 and 14×14×64 inputs
    assert [(c["input"], c["kernel"]) for c in convs] == [
        ([2, 28, 28, 1], [3, 3, 1, 64]), ([2, 28, 28, 64], [3, 3, 64, 64]),
        ([2, 14, 14, 64], [3, 3, 64, 64])]
    for conv in convs:
        parts = conv["parts"]
        assert tuple(parts) == PARTS
        assert parts["forward"]["rate_vs_forward"] == pytest.approx(1.0)
        for name in PARTS:
            assert parts[name]["ms"] > 0 and parts[name]["flops"] > 0, name
        for name in PARTS[3:]:  # the rewrites compute XLA's kernel gradient
            assert parts[name]["max_rel_err"] < 1e-5, (conv["input"], name)
    text = "\n".join(_conv_lines([{"model": "cnn", "batch_size": 2, "conv_parts": convs}]))
    assert "| cnn | 2 | 28×28×64 → 64 | kernel grad, patches · dy |" in text
