"""Helper for tests/test_parallel.py, run in a subprocess (JAX must get its device count and
join a distributed job before it starts). Prints its result as the last line, in JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/_parallel_worker.py \
      equivalence OUT.npz    # 1 device vs 4 devices in one process, HLO all-reduce bytes
  FGRAD_COORDINATOR=127.0.0.1:PORT FGRAD_NUM_PROCESSES=2 FGRAD_PROCESS_ID=I \
      python tests/_parallel_worker.py process OUT.npz   # one process of a 2-process job

Both train a width-32 MLP for a few steps on random MNIST-shaped data with each method and
save the final flat parameters to OUT.npz (one array per method: one-device reference for
``equivalence``, data-parallel over every process's devices for ``process``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import numpy as np

from fgrad._models import make_model
from fgrad.lab.run.comm_bytes import compare_runs, train_synthetic
from fgrad.train.parallel import data_mesh, init_distributed, make_data_parallel_step

METHODS = ("forward", "backprop")
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


def equivalence(out: str) -> dict[str, Any]:
    n = jax.device_count()
    mesh = data_mesh(n, TRAIN["batch_size"])
    result: dict[str, Any] = {"devices": n, "num_tangents": CFG["num_tangents"]}
    singles = {}
    for m in METHODS:
        singles[m] = train_synthetic(model(), m, CFG, None, **TRAIN)
        result[m] = compare_runs(singles[m], train_synthetic(model(), m, CFG, mesh, **TRAIN))
    np.savez(out, **{m: run.final for m, run in singles.items()})
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
