"""Helper for tests/test_parallel.py, run in a subprocess (JAX must get its device count and
join a distributed job before it starts). Prints its result as the last line, in JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/_parallel_worker.py \
      equivalence OUT.npz    # 1 device vs 4 devices in one process, HLO all-reduce bytes
  FGRAD_COORDINATOR=127.0.0.1:PORT FGRAD_NUM_PROCESSES=2 FGRAD_PROCESS_ID=I \
      python tests/_parallel_worker.py process OUT.npz   # one process of a 2-process job

Both train a width-32 MLP for a few steps on random MNIST-shaped data with each method and
save the final flat parameters to OUT.npz (per method: the one-device run and the 4-device run
for ``equivalence``, data-parallel over every process's devices for ``process``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fgrad._activity import activity_gradient
from fgrad._models import cross_entropy_loss, init_params, make_model
from fgrad.lab.run.comm_bytes import compare_runs, train_synthetic
from fgrad.train.parallel import data_mesh, init_distributed, make_data_parallel_step

METHODS = ("forward", "backprop", "activity")  # activity: each device draws its own noise
CFG = {"num_tangents": 2}
TRAIN = {"batch_size": 32, "steps": 3, "learning_rate": 0.05, "seed": 0}


def model():
    return make_model("mlp", width=32, depth=1)


def error_of(fn) -> str | None:
    """The message of the ValueError ``fn()`` raises, or None."""
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def activity_reference(n: int, mesh) -> dict[str, float]:
    """One activity-perturbed estimate on n devices (8 examples each, device d's noise from
    fold_in(key, d)) against the mean of the n shards' estimates computed one by one."""
    m = model()
    params, loss = init_params(m, jax.random.key(0)), cross_entropy_loss(m)
    x = jax.random.uniform(jax.random.key(1), (8 * n, 28, 28, 1))
    y = jnp.arange(8 * n, dtype=jnp.int32) % 10
    key, (axis,) = jax.random.key(2), mesh.axis_names
    dp = jax.jit(jax.shard_map(
        lambda p, x, y: activity_gradient(loss, p, (x, y), key, axis_name=axis).grad,
        mesh=mesh, in_specs=(P(), P(axis), P(axis)), out_specs=P()))(params, x, y)
    parts = [activity_gradient(loss, params, (x[8 * d:8 * d + 8], y[8 * d:8 * d + 8]),
                               jax.random.fold_in(key, d)).grad for d in range(n)]
    ref = jax.tree.map(lambda *g: sum(g) / n, *parts)
    diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(dp),
                                                             jax.tree.leaves(ref))]
    return {"max_abs_diff": max(diffs),
            "max_abs": max(float(jnp.max(jnp.abs(r))) for r in jax.tree.leaves(ref))}


def equivalence(out: str) -> dict[str, Any]:
    n = jax.device_count()
    mesh = data_mesh(n, TRAIN["batch_size"])
    result: dict[str, Any] = {"devices": n, "num_tangents": CFG["num_tangents"]}
    finals = {}
    for m in METHODS:
        single = train_synthetic(model(), m, CFG, None, **TRAIN)
        parallel = train_synthetic(model(), m, CFG, mesh, **TRAIN)
        result[m] = compare_runs(single, parallel)
        finals[m], finals[f"{m}_parallel"] = single.final, parallel.final
    np.savez(out, **finals)
    result["activity_gradient"] = activity_reference(n, mesh)
    result["errors"] = {
        "indivisible": error_of(lambda: data_mesh(n, 4 * n + 2)),
        "too_many": error_of(lambda: data_mesh(n + 1, 8 * n)),
        "step_indivisible": error_of(
            lambda: make_data_parallel_step(lambda *a: 0.0, None, 4 * n + 1, mesh)),
    }
    return result


def process(out: str) -> dict[str, Any]:
    distributed = init_distributed()
    mesh = data_mesh(jax.device_count(), TRAIN["batch_size"])
    np.savez(out, **{m: train_synthetic(model(), m, CFG, mesh, **TRAIN).final for m in METHODS})
    return {"distributed": distributed, "process_index": jax.process_index(),
            "process_count": jax.process_count(), "devices": jax.device_count(),
            "local_devices": jax.local_device_count()}


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    print(json.dumps({"equivalence": equivalence, "process": process}[mode](path)), flush=True)
