"""Learning-rate schedules and the optimizer built around a gradient source."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import optax


def check_learning_rate(learning_rate: float) -> float:
    """Returns ``learning_rate`` as a float, or raises a one-line ValueError."""
    lr = float(learning_rate)
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"learning rate must be a finite number >= 0, got {learning_rate!r}")
    return lr


def paper_schedule(init_value: float, decay: float = 1e-4) -> optax.Schedule:
    """The paper's schedule η_i = η₀ · exp(−i k).

    Args:
      init_value: η₀ ≥ 0.
      decay: k ≥ 0 (the paper uses 1e-4).

    Returns:
      An optax schedule ``step -> learning rate``.

    Example:
      >>> float(paper_schedule(1.0, 1e-4)(10_000))  # e^{-1}
      0.367...
    """
    eta0 = check_learning_rate(init_value)
    k = float(decay)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"learning-rate decay k must be a finite number >= 0, got {decay!r}")
    return lambda step: eta0 * jnp.exp(-k * jnp.asarray(step, jnp.float32))


OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}


class ClipState(NamedTuple):
    """The global norm of the last update before clipping (a train-step measurement)."""

    grad_norm: jnp.ndarray


def clip_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Rescales the update to global norm at most ``max_norm``:
    g ← g · min(1, c / ‖g‖₂) (``optax.clip_by_global_norm``), keeping ‖g‖₂ before clipping in
    its state as ``grad_norm`` so the train step can log how often the clip binds.

    Args:
      max_norm: c > 0.

    Returns:
      An optax transformation; its state is a :class:`ClipState`.

    Example:
      >>> tx = clip_global_norm(1.0)
      >>> g, s = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(None))
      >>> g["w"].tolist(), float(s.grad_norm)
      ([0.6..., 0.8...], 5.0)
    """
    c = float(max_norm)
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"clip_norm must be a finite number > 0 (0 in a config: no clipping), "
                         f"got {max_norm!r}")
    inner = optax.clip_by_global_norm(c)

    def init_fn(params):
        del params
        return ClipState(jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None):
        del state
        clipped, _ = inner.update(updates, optax.EmptyState())
        return clipped, ClipState(optax.tree.norm(updates).astype(jnp.float32))

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(source: optax.GradientTransformationExtraArgs, learning_rate: float,
                   *, decay: float = 1e-4, optimizer: str = "sgd", clip_norm: float = 0.0
                   ) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(source, optimizer(paper_schedule(learning_rate, decay)))``, with
    :func:`clip_global_norm` between them when ``clip_norm`` > 0.

    Args:
      source: a gradient source (:func:`forward_gradient_source` or :func:`backprop_source`).
      learning_rate: η₀.
      decay: k of the paper's schedule.
      optimizer: ``"sgd"`` (the paper's) or ``"adam"``.
      clip_norm: c of :func:`clip_global_norm`; 0 (the paper's): no clipping.

    Returns:
      The chained transformation; its ``update`` takes ``value_fn``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    opt = OPTIMIZERS[optimizer](paper_schedule(learning_rate, decay))
    if clip_norm:
        return optax.chain(source, clip_global_norm(clip_norm), opt)
    return optax.chain(source, opt)
