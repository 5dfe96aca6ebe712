"""The XLA flags fgrad's entry points set (the one place they are defined).

XLA reads ``XLA_FLAGS`` when JAX first initializes a backend, so an entry point calls
:func:`configure_xla_flags` before any JAX computation (importing ``jax`` or ``fgrad`` first is
fine; running anything is not).

The flags, measured with ``experiments/bench.py`` and ``experiments/depth_sweep.py``
(jax/jaxlib 0.10.2, 2-core AMD EPYC); both only affect XLA:CPU:

* ``--xla_cpu_experimental_ynn_fusion_type=individual_dot`` keeps XLA CPU's YNNPACK library
  for dot products but not for convolutions and reductions. With the default set, the
  weight-gradient convolutions of the CNN's backward pass run in YNNPACK at ~3 GFLOP/s (a
  tenth of the forward convolutions' rate; the CNN backprop step is 15× f at batch 64, 33× at
  1024, with flax's max-pool); without it they run in XLA's Eigen convolution (backprop
  4.4× and 4.6× f; 3.8× and 3.9× with fgrad's reshape max-pool, ``_models.max_pool_2x2``).
  Gradients are unchanged up to float32 summation order (checked in tests/test_bench.py).
  Dots stay in YNNPACK: turning it off entirely makes the MLP's backprop step 1.5× slower
  (Eigen's transposed-operand dot).
* ``--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED``: the default
  (concurrency-optimized) scheduler computes the forward-gradient step's tangents and primal
  activations far ahead of their use, so its peak holds every tangent plus ~15 activations;
  the memory-optimized order interleaves them, so the step's non-parameter memory stays flat in
  depth (MLP width 1024, depth 16, batch 1024: 217 → 114 MiB, backprop 201 MiB) and K = 4
  steps run ~2× faster. Backprop and f are unchanged.

Set ``FGRAD_XLA_FLAGS=0`` to leave ``XLA_FLAGS`` untouched (e.g. to measure the defaults). A
flag already present in ``XLA_FLAGS`` is never overridden.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import MutableMapping

FGRAD_XLA_FLAGS: tuple[str, ...] = (
    "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
)
SWITCH = "FGRAD_XLA_FLAGS"


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def merged_flags(current: str, flags: tuple[str, ...] = FGRAD_XLA_FLAGS) -> str:
    """``current`` XLA_FLAGS plus every flag of ``flags`` whose name it does not set yet.

    Args:
        current: the existing ``XLA_FLAGS`` value (space-separated flags).
        flags: the flags to add.

    Returns:
        The merged, space-separated flags.
    """
    present = {_name(f) for f in current.split()}
    return " ".join([*current.split(), *(f for f in flags if _name(f) not in present)])


def configure_xla_flags(environ: MutableMapping[str, str] | None = None) -> str:
    """Adds fgrad's XLA flags to ``XLA_FLAGS`` (unless ``FGRAD_XLA_FLAGS=0``).

    Must run before JAX initializes its backend; warns if it already has (the flags would then
    only apply to a later process).

    Args:
        environ: the environment to edit (default ``os.environ``).

    Returns:
        The resulting ``XLA_FLAGS``.
    """
    env = os.environ if environ is None else environ
    if env.get(SWITCH, "1") != "0":
        before = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = merged_flags(before)
        if environ is None and env["XLA_FLAGS"] != before and _backend_initialized():
            warnings.warn("configure_xla_flags() ran after JAX initialized its backend: the "
                          "XLA flags apply only to new processes", stacklevel=2)
    return env.get("XLA_FLAGS", "")


def _backend_initialized() -> bool:
    import sys

    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


# The same settings as compiler options, for one compilation (``lowered.compile(options)``),
# e.g. in a process whose backend is already initialized (tests) or to compare in one process.
FGRAD_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
}
