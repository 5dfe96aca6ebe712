"""Bytes all-reduced per data-parallel training step: forward gradient vs backprop
(``experiments/comm_bytes.py``, beyond the paper).

On D host (CPU) devices forced with ``jax_num_cpu_devices``, for each model and method this
compiles the data-parallel step of :mod:`fgrad.train.parallel` (the batch split over the
devices), sums the operand bytes of the all-reduces in its HLO (:func:`allreduce_sizes`), and
trains a few SGD steps on random MNIST-shaped data on D devices and on one device to report the
largest parameter difference (:func:`train_synthetic`, :func:`compare_runs`). A forward-gradient
step all-reduces K + 1 float32 scalars (the K directional derivatives and the loss); a backprop
step all-reduces the whole gradient, 4n bytes for n parameters; so does an activity-perturbed
step (each device's estimate is a weight-sized sum over its examples, so the mean over devices
is an all-reduce of n numbers); a low-rank forward step K + 1 scalars, like i.i.d. tangents.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from fgrad._env import environment
from fgrad._models import IMAGE_SHAPE, NUM_CLASSES, cross_entropy_loss, init_params, make_model
from fgrad._results import write_json
from fgrad._types import PyTree
from fgrad.lab.build import build_optimizer
from fgrad.lab.config import to_dict
from fgrad.lab.run import RunOptions
from fgrad.train.parallel import data_mesh, make_data_parallel_step, replicate
from fgrad.train.step import Data, epoch_permutations, init_state, make_train_step

_SHAPE = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_ALLREDUCE = re.compile(r"=\s*(.*?)\s+all-reduce(?:-start)?\(")


def _dtype_bytes(hlo_type: str) -> int:
    """Bytes per element of an HLO element type (pred, s32, f32, bf16, c64, f8e4m3fn, ...)."""
    if hlo_type == "pred":
        return 1
    bits = re.search(r"\d+", hlo_type)
    return max(1, int(bits.group()) // 8) if bits else 1


def allreduce_sizes(hlo_text: str) -> list[int]:
    """Bytes of each all-reduce in an HLO module's text (an async pair counts once).

    Args:
      hlo_text: e.g. ``jax.jit(f).lower(...).compile().as_text()``.

    Returns:
      One entry per ``all-reduce`` (or ``all-reduce-start``) op: the bytes of its result, which
      for an all-reduce equals its operands' (a tuple all-reduce sums its elements).
    """
    sizes = []
    for line in hlo_text.splitlines():
        match = _ALLREDUCE.search(line)
        if match:
            sizes.append(sum(_dtype_bytes(t) * int(np.prod([int(d) for d in dims.split(",")
                                                            if d] or [1]))
                             for t, dims in _SHAPE.findall(match.group(1))))
    return sizes


class SyntheticRun(NamedTuple):
    """What :func:`train_synthetic` returns: flat float32 params before and after training, and
    the compiled training step (for :func:`allreduce_sizes`)."""

    initial: np.ndarray
    final: np.ndarray
    compiled: Any


def _flat(params: PyTree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(params)])


def train_synthetic(model: nn.Module, method: str, cfg: dict[str, Any], mesh: Mesh | None, *,
                    batch_size: int, steps: int, learning_rate: float, seed: int = 0
                    ) -> SyntheticRun:
    """A few SGD steps of ``model`` on random MNIST-shaped data, on one device or data-parallel.

    Every process and both placements see the same initial params, data, batches and tangents
    (all from ``seed``), so runs differ only by where the batch is evaluated.

    Args:
      model: a flax module from :func:`fgrad._models.make_model`.
      method: ``"forward"``, ``"activity"`` or ``"backprop"``.
      cfg: estimator options for the forward gradient (e.g. ``{"num_tangents": 2}``).
      mesh: a mesh from :func:`data_mesh`, or None for the plain step on the default device.
      batch_size: the global minibatch size.
      steps: training steps (the data set has ``batch_size * steps`` examples, one epoch).
      learning_rate: the SGD step size (constant).
      seed: seeds params, data and tangents.

    Returns:
      A :class:`SyntheticRun`.
    """
    k_params, k_data, k_x, k_y = jax.random.split(jax.random.key(seed), 4)
    n = batch_size * steps
    params = init_params(model, k_params)
    loss_fn = cross_entropy_loss(model)
    tx = build_optimizer(method, learning_rate, seed, {**cfg, "decay": 0.0},
                         data_parallel=mesh is not None)
    state = init_state(params, tx)
    data = Data(jax.random.uniform(k_x, (n, *IMAGE_SHAPE), jnp.float32),
                jax.random.randint(k_y, (n,), 0, NUM_CLASSES, jnp.int32),
                epoch_permutations(k_data, n, batch_size, steps))
    if mesh is None:
        step = make_train_step(loss_fn, tx, batch_size)
    else:
        step = make_data_parallel_step(loss_fn, tx, batch_size, mesh)
        state, data = replicate((state, data), mesh)
    initial = _flat(params)
    compiled = jax.jit(step, donate_argnums=0).lower(state, data).compile()
    for _ in range(steps):
        state, _loss = compiled(state, data)
    return SyntheticRun(initial, _flat(state.params), compiled)


def compare_runs(single: SyntheticRun, parallel: SyntheticRun) -> dict[str, Any]:
    """Communication and equivalence of a data-parallel run against the one-device run.

    Args:
      single: :func:`train_synthetic` with ``mesh=None``.
      parallel: the same with a mesh (same model, method, options and seed).

    Returns:
      ``num_params`` n; ``gradient_bytes`` (4 n, what a gradient all-reduce moves);
      ``allreduce_bytes`` and ``allreduce_ops`` of one data-parallel step (compiled HLO);
      ``max_abs_diff`` = max_i |θ_D − θ_1| between the final params;
      ``max_abs_update`` = max_i |θ_1 − θ_0| (the scale ``max_abs_diff`` compares with).
    """
    sizes = allreduce_sizes(parallel.compiled.as_text())
    n = int(single.final.size)
    return {"num_params": n, "gradient_bytes": 4 * n, "allreduce_bytes": sum(sizes),
            "allreduce_ops": len(sizes),
            "max_abs_diff": float(np.max(np.abs(parallel.final - single.final))),
            "max_abs_update": float(np.max(np.abs(single.final - single.initial)))}

def variants(cfg: ConfigDict) -> list[tuple[str, dict[str, Any]]]:
    """(method, estimator options) of every measured step: forward gradients with i.i.d. and
    with low-rank tangents, activity perturbation, backprop."""
    return ([("forward", {"num_tangents": k}) for k in cfg.forward_num_tangents]
            + [("forward", {"num_tangents": k, "tangents": "low_rank"})
               for k in cfg.low_rank_num_tangents]
            + [("activity", {"num_perturbations": k}) for k in cfg.activity_num_perturbations]
            + [("backprop", {})])


def run(cfg: ConfigDict, out_dir: Path, opts: RunOptions) -> None:
    """Measures every model × method of ``cfg`` on ``cfg.devices`` CPU devices.

    Must run before JAX initializes its backend (the device count is fixed then).
    """
    del opts
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", int(cfg.devices))
    mesh = data_mesh(int(cfg.devices), int(cfg.batch_size))
    train = {k: cfg[k] for k in ("batch_size", "steps", "learning_rate", "seed")}
    rows = []
    print(f"{'model':5} {'method':8} {'K':>2} {'params':>9} {'all-reduce B/step':>18} "
          f"{'gradient B':>11} {'max |Δθ| vs 1 dev':>18} {'max |update|':>12}")
    for name, kwargs in cfg.models.items():
        model = make_model(name, **dict(kwargs))
        for method, est in variants(cfg):
            single = train_synthetic(model, method, est, None, **train)
            row = {"model": name, "method": method, **est,
                   **compare_runs(single, train_synthetic(model, method, est, mesh, **train))}
            rows.append(row)
            label = f"{method}-lowrank" if est.get("tangents") == "low_rank" else method
            k = est.get("num_tangents", est.get("num_perturbations", ""))
            print(f"{name:5} {label:8} {k:>2} "
                  f"{row['num_params']:>9,} {row['allreduce_bytes']:>18,} "
                  f"{row['gradient_bytes']:>11,} {row['max_abs_diff']:>18.2e} "
                  f"{row['max_abs_update']:>12.2e}", flush=True)
    path = out_dir / "allreduce_bytes.json"
    write_json(path, {"experiment": "comm_bytes", "devices": cfg.devices, "config": to_dict(cfg),
                      "env": environment(), "results": rows})
    print(f"results in {path}")
