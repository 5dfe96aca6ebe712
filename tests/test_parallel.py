"""Data-parallel training (fgrad.train.parallel): 4 devices match 1 device, forward gradients
all-reduce K + 1 scalars while backprop all-reduces the gradient, two processes agree, bad
configurations fail with one line.

Several devices need ``--xla_force_host_platform_device_count`` (and several processes need
``jax.distributed``) before JAX starts, so those checks run tests/_parallel_worker.py in
subprocesses, with timeouts so that a hang fails instead of blocking.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fgrad._mnist import Mnist
from fgrad._results import read_jsonl
from fgrad.lab.run.comm_bytes import allreduce_sizes
from fgrad.lab.run.mnist import train_run
from fgrad.train.parallel import check_data_parallel, data_mesh, distributed_args

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_parallel_worker.py"
TIMEOUT_S = 150


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FGRAD_", "JAX_COORDINATOR", "SLURM_", "OMPI_"))}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu", "JAX_NUMPY_RANK_PROMOTION": "raise",
            "JAX_NUMPY_DTYPE_PROMOTION": "strict", **extra}


def _last_json(stdout: str) -> dict:
    """The worker's JSON result: its last stdout line (gloo logs its own lines before)."""
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    """One process with 4 CPU devices: each method on 1 device and on 4 devices."""
    out = tmp_path_factory.mktemp("parallel") / "single.npz"
    proc = subprocess.run([sys.executable, str(WORKER), "equivalence", str(out)], env=_env(4),
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _last_json(proc.stdout), out


@pytest.mark.parametrize("method", ["forward", "backprop"])
def test_four_devices_match_one_device(equivalence, method):
    r = equivalence[0][method]
    assert r["max_abs_update"] > 1e-3  # training moved the params
    assert r["max_abs_diff"] <= 1e-6 + 1e-5 * r["max_abs_update"], r


def test_forward_allreduces_k_scalars_backprop_the_gradient(equivalence):
    r = equivalence[0]
    k = r["num_tangents"]
    # forward: the K directional derivatives and the loss, float32
    assert 0 < r["forward"]["allreduce_bytes"] <= 4 * (k + 1)
    # backprop: every gradient entry (and the loss)
    assert r["backprop"]["allreduce_bytes"] >= 4 * r["backprop"]["num_params"]
    assert r["backprop"]["num_params"] > 10_000
    # activity perturbation: each device's estimate is weight-sized, so its mean is too
    assert r["activity"]["allreduce_bytes"] >= 4 * r["activity"]["num_params"]


def test_activity_on_four_devices_is_the_mean_of_the_shards_estimates(equivalence):
    """Each device draws its own noise (the key folded with its index) for its shard; the
    data-parallel estimate equals the mean of the 4 shards' estimates computed one by one (not
    4× it: the replicated params are cast to device-varying before the local products)."""
    g = equivalence[0]["activity_gradient"]
    assert g["max_abs"] > 1e-4
    assert g["max_abs_diff"] <= 1e-5 * g["max_abs"], g
    assert equivalence[0]["activity"]["max_abs_update"] > 1e-3  # and it trains


def test_bad_configuration_on_four_devices(equivalence):
    errors = equivalence[0]["errors"]
    assert "not divisible by data_parallel=4" in errors["indivisible"]
    assert "not divisible by data_parallel=4" in errors["step_indivisible"]
    assert "5 devices requested but only 4 present" in errors["too_many"]
    assert all("\n" not in e for e in errors.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one_process(equivalence, tmp_path):
    """Two processes × 2 CPU devices (gloo collectives) end with identical params, equal to
    training on one device in one process."""
    port, outs, procs = _free_port(), [tmp_path / f"p{i}.npz" for i in range(2)], []
    for i in range(2):
        env = _env(2, FGRAD_COORDINATOR=f"127.0.0.1:{port}", FGRAD_NUM_PROCESSES="2",
                   FGRAD_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), "process", str(outs[i])],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        results = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    infos = [_last_json(stdout) for stdout, _ in results]
    assert [i["process_index"] for i in infos] == [0, 1]
    assert all(i["distributed"] and i["process_count"] == 2 and i["devices"] == 4
               and i["local_devices"] == 2 for i in infos)
    p0, p1, single = (np.load(f) for f in (*outs, equivalence[1]))
    for method in ("forward", "backprop", "activity"):
        np.testing.assert_array_equal(p0[method], p1[method])
        # forward and backprop equal one device; activity (noise per device) equals the
        # one-process run on 4 devices
        ref = single[f"{method}_parallel" if method == "activity" else method]
        scale = np.max(np.abs(ref)) + 1.0
        np.testing.assert_allclose(p0[method], ref, rtol=0, atol=1e-5 * scale)


def test_check_data_parallel_messages():
    assert check_data_parallel(4, 64, 8) == 4
    for bad, match in (((3, 64, 2), "3 devices requested but only 2 present"),
                       ((4, 30, 4), "batch_size 30 is not divisible by data_parallel=4"),
                       ((0, 64, 4), "integer >= 1"), (("2", 64, 4), "integer >= 1"),
                       ((True, 64, 4), "integer >= 1")):
        with pytest.raises(ValueError, match=match):
            check_data_parallel(*bad)
    with pytest.raises(ValueError, match="requested but only"):
        data_mesh(jax.device_count() + 1, 64 * (jax.device_count() + 1))


def _tiny_mnist() -> Mnist:
    rng = np.random.default_rng(0)
    return Mnist(rng.random((256, 28, 28, 1), np.float32), rng.integers(0, 10, 256, np.int32),
                 rng.random((100, 28, 28, 1), np.float32), rng.integers(0, 10, 100, np.int32))


def test_train_run_data_parallel_one_device_matches_default(tmp_path):
    """``data_parallel: 1`` goes through the mesh path of train_run (replicated state and data,
    shard_map step, evaluation) and logs the same run as the default single-device path."""
    cfg = {"name": "t", "kind": "mnist", "model": "logreg", "steps": 4, "batch_size": 32,
           "decay": 0.0, "steps_per_call": 2, "eval_every": 4, "eval_examples": 100}
    runs = {}
    for dp in (None, 1):
        s = train_run({**cfg, "data_parallel": dp}, _tiny_mnist(), "forward", 0.05, 0, tmp_path,
                      f"dp{dp}")
        assert s["status"] == "complete"
        runs[dp] = [r.get("loss", r.get("test_loss"))
                    for r in read_jsonl(tmp_path / f"dp{dp}.jsonl")]
    assert len(runs[1]) == 4 + 2  # train steps and evaluations
    np.testing.assert_allclose(runs[1], runs[None], rtol=1e-5)


def test_train_run_rejects_bad_data_parallel(tmp_path):
    cfg = {"name": "t", "kind": "mnist", "model": "logreg", "steps": 2, "batch_size": 32,
           "decay": 0.0, "steps_per_call": 1, "eval_examples": 100,
           "data_parallel": jax.device_count() + 1}
    with pytest.raises(ValueError, match="requested but only"):
        train_run(cfg, _tiny_mnist(), "forward", 0.05, 0, tmp_path, "bad")


def test_distributed_args_from_environment():
    assert distributed_args({}) is None
    assert distributed_args({"SLURM_JOB_ID": "1", "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert distributed_args({"FGRAD_COORDINATOR": "h:1234", "FGRAD_NUM_PROCESSES": "4",
                             "FGRAD_PROCESS_ID": "2"}) == {
        "coordinator_address": "h:1234", "num_processes": 4, "process_id": 2}
    assert distributed_args({"JAX_COORDINATOR_ADDRESS": "h:1"}) == {"coordinator_address": "h:1"}
    assert distributed_args({"SLURM_STEP_NUM_TASKS": "8"}) == {}
    assert distributed_args({"FGRAD_DISTRIBUTED": "auto"}) == {}
    with pytest.raises(ValueError, match="FGRAD_PROCESS_ID must be an integer"):
        distributed_args({"FGRAD_COORDINATOR": "h:1", "FGRAD_PROCESS_ID": "x"})


def test_allreduce_sizes_parses_hlo():
    hlo = "\n".join([
        "  %a = f32[2]{0} all-reduce(f32[2]{0} %x), replica_groups={{0,1}}, to_apply=%add",
        "  %b = (f32[784,32]{1,0}, bf16[10]{0}, f32[]) all-reduce(%p, %q, %r), to_apply=%add",
        "  %c = f32[5]{0} all-reduce-start(f32[5]{0} %y), to_apply=%add",
        "  %d = f32[5]{0} all-reduce-done(f32[5]{0} %c)",
        "  %e = f32[2]{0} get-tuple-element(%all-reduce), index=0",
        "  %f = f32[8]{0} add(f32[8]{0} %x, f32[8]{0} %y)",
    ])
    assert allreduce_sizes(hlo) == [8, 4 * 784 * 32 + 2 * 10 + 4, 20]
