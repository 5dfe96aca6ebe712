"""Data-parallel training over many devices and hosts (``jax.shard_map`` on a 1-D mesh).

The global minibatch of each step is split across the devices of a ``"data"`` mesh axis; the
parameters, the optimizer state (including the tangents' PRNG key) and the training data are
replicated, and each device gathers its slice of the step's indices from the replicated
permutation (:func:`fgrad.train.step.make_train_step` with ``local_indices``). The gradient source,
built with ``axis_name="data"``, is the only place devices communicate:

* forward gradient: every device draws the same K tangents from the same key, so devices only
  average the K directional derivatives ∇f_d·v_k (and the loss) — an all-reduce of K + 1
  scalars per step — and then form the same g = combine(d̄, v) locally;
* backprop: devices average their n-parameter gradients — an all-reduce of n values.

For D devices with equal shards, mean_d(f_d) is the loss on the global batch, so both methods
compute the same update as one device on the global batch (up to float rounding).
:func:`fgrad.lab.run.comm_bytes.allreduce_sizes` reads the communication volume off the
compiled HLO.

Several hosts: :func:`init_distributed` calls ``jax.distributed.initialize`` when the
environment names a coordinator (or a SLURM / Open MPI job, or ``FGRAD_DISTRIBUTED=auto``);
``jax.devices()`` then lists every host's devices and the same program runs on each host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fgrad._types import PyTree
from fgrad.train.step import StepFn, make_train_step

DATA_AXIS = "data"
# Environment read by init_distributed (besides jax's own JAX_COORDINATOR_ADDRESS and
# JAX_LOCAL_DEVICE_IDS).
COORDINATOR_ENV = ("FGRAD_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
NUM_PROCESSES_ENV = "FGRAD_NUM_PROCESSES"
PROCESS_ID_ENV = "FGRAD_PROCESS_ID"
AUTO_ENV = "FGRAD_DISTRIBUTED"


def check_data_parallel(num_devices: Any, batch_size: int, available: int) -> int:
    """Returns ``num_devices`` as an int, or raises a one-line ValueError.

    Args:
      num_devices: the requested number of devices D (config ``data_parallel``).
      batch_size: the global minibatch size B, split into D shards of B / D.
      available: the number of devices present (all hosts).

    Returns:
      D.
    """
    if isinstance(num_devices, bool) or not isinstance(num_devices, (int, np.integer)) \
            or num_devices < 1:
        raise ValueError(f"data_parallel must be an integer >= 1 (number of devices), got "
                         f"{num_devices!r}")
    if num_devices > available:
        raise ValueError(f"data_parallel={num_devices} devices requested but only {available} "
                         f"present ({jax.default_backend()})")
    if batch_size % num_devices:
        raise ValueError(f"global batch_size {batch_size} is not divisible by data_parallel="
                         f"{num_devices} devices")
    return int(num_devices)


def data_mesh(num_devices: int, batch_size: int) -> Mesh:
    """A 1-D mesh of the first ``num_devices`` devices (of every host), axis ``"data"``.

    Args:
      num_devices: D ≥ 1; with several processes, all devices (``jax.device_count()``).
      batch_size: the global minibatch size, which D must divide.

    Returns:
      The ``jax.sharding.Mesh``.
    """
    devices = jax.devices()
    n = check_data_parallel(num_devices, batch_size, len(devices))
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"with {jax.process_count()} processes data_parallel must use all "
                         f"{len(devices)} devices, got {n}")
    return Mesh(np.array(devices[:n]), (DATA_AXIS,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """``tree`` placed whole on every device of ``mesh`` (params, optimizer state, data).

    Each process copies its own host value to its own devices (``make_array_from_callback``),
    so with several processes every process must hold the same ``tree`` (same seeds); PRNG
    keys travel as their key data.

    Args:
      tree: a pytree of arrays (numpy or jax, on any one device) and typed PRNG keys.
      mesh: the mesh from :func:`data_mesh`.

    Returns:
      The same tree of global arrays, fully replicated over ``mesh``.
    """
    sharding = NamedSharding(mesh, P())

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def device_slice(axis_name: str = DATA_AXIS) -> Callable[[jax.Array], jax.Array]:
    """``local(idx)``: device i's contiguous i-th part (of D) of the global indices ``idx``."""

    def local(idx: jax.Array) -> jax.Array:
        size = idx.shape[0] // jax.lax.axis_size(axis_name)
        return jax.lax.dynamic_slice_in_dim(idx, jax.lax.axis_index(axis_name) * size, size)

    return local


def make_data_parallel_step(loss_fn: Callable, tx: optax.GradientTransformationExtraArgs,
                            batch_size: int, mesh: Mesh
                            ) -> StepFn:
    """The training step of :func:`fgrad.train.step.make_train_step` with the global minibatch split
    over the devices of ``mesh``.

    Args:
      loss_fn: ``loss(params, images, labels)``, the mean loss of a batch.
      tx: the optimizer; its gradient source must be built with ``axis_name`` equal to the
        mesh's axis (else each device would step on its own shard's gradient, which
        ``shard_map`` rejects when it checks that the returned state is replicated).
      batch_size: the global minibatch size B (each device evaluates B / D examples).
      mesh: a 1-D mesh from :func:`data_mesh`.

    Returns:
      ``train_step(state, data) -> (state, loss)`` on replicated ``state`` and ``data`` (see
      :func:`replicate`); the loss is the global minibatch's.
    """
    (axis,) = mesh.axis_names
    check_data_parallel(mesh.size, batch_size, mesh.size)
    step = make_train_step(loss_fn, tx, batch_size, device_slice(axis))
    return jax.shard_map(step, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()))


def distributed_args(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``jax.distributed.initialize`` arguments the environment asks for, or None.

    * ``FGRAD_COORDINATOR`` (or ``JAX_COORDINATOR_ADDRESS``) = ``host:port`` of process 0,
      with ``FGRAD_NUM_PROCESSES`` and ``FGRAD_PROCESS_ID`` (omitted ones are auto-detected
      by jax from SLURM / Open MPI);
    * else a multi-task SLURM step (``SLURM_STEP_NUM_TASKS`` > 1), an Open MPI launch or
      ``FGRAD_DISTRIBUTED=auto`` (e.g. Cloud TPU pods): everything auto-detected (``{}``);
    * else None: one process.

    Args:
      environ: the environment (``os.environ``).

    Returns:
      Keyword arguments for ``jax.distributed.initialize``, or None.
    """
    coordinator = next((environ[k] for k in COORDINATOR_ENV if environ.get(k)), None)
    if coordinator:
        args: dict[str, Any] = {"coordinator_address": coordinator}
        for key, env in (("num_processes", NUM_PROCESSES_ENV), ("process_id", PROCESS_ID_ENV)):
            if environ.get(env):
                try:
                    args[key] = int(environ[env])
                except ValueError:
                    raise ValueError(f"{env} must be an integer, got {environ[env]!r}") from None
        return args
    if (environ.get(AUTO_ENV) == "auto" or "OMPI_MCA_orte_hnp_uri" in environ
            or environ.get("SLURM_STEP_NUM_TASKS", "1").isdigit()
            and int(environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1):
        return {}
    return None


def init_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Joins a multi-process JAX job when the environment says so; else does nothing.

    Must run before any JAX computation. CPU processes communicate through gloo (jax's
    default ``jax_cpu_collectives_implementation``); GPUs and TPUs through their own
    collectives.

    Args:
      environ: the environment (default ``os.environ``), see :func:`distributed_args`.

    Returns:
      Whether this process is part of a distributed job.
    """
    if jax.distributed.is_initialized():
        return True
    args = distributed_args(os.environ if environ is None else environ)
    if args is None:
        return False
    jax.distributed.initialize(**args)
    return True


