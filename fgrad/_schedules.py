"""Learning-rate schedules and the optimizer built around a gradient source."""

from __future__ import annotations

import math

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


def make_optimizer(source: optax.GradientTransformationExtraArgs, learning_rate: float,
                   *, decay: float = 1e-4, optimizer: str = "sgd"
                   ) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(source, optimizer(paper_schedule(learning_rate, decay)))``.

    Args:
      source: a gradient source (:func:`forward_gradient_source` or :func:`backprop_source`).
      learning_rate: η₀.
      decay: k of the paper's schedule.
      optimizer: ``"sgd"`` (the paper's) or ``"adam"``.

    Returns:
      The chained transformation; its ``update`` takes ``value_fn``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    return optax.chain(source, OPTIMIZERS[optimizer](paper_schedule(learning_rate, decay)))
