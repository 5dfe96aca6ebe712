"""Classic optimisation test functions (paper Figure 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def beale(x: jax.Array) -> jax.Array:
    """Beale's function, f(x, y) = Σ_{i=1..3} (c_i − x + x yⁱ)², c = (1.5, 2.25, 2.625).

    Global minimum f(3, 0.5) = 0.

    Args:
      x: shape (2,).

    Returns:
      A scalar.
    """
    if jnp.shape(x) != (2,):
        raise ValueError(f"beale takes a point of shape (2,), got {jnp.shape(x)}")
    a, b = x[0], x[1]
    return ((1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2
            + (2.625 - a + a * b**3) ** 2)


def rosenbrock(x: jax.Array) -> jax.Array:
    """Rosenbrock's function in n ≥ 2 dimensions, Σ_i 100 (x_{i+1} − x_i²)² + (1 − x_i)².

    Global minimum f(1, …, 1) = 0.

    Args:
      x: shape (n,), n ≥ 2.

    Returns:
      A scalar.
    """
    if jnp.ndim(x) != 1 or jnp.shape(x)[0] < 2:
        raise ValueError(f"rosenbrock takes a point of shape (n,), n >= 2, got {jnp.shape(x)}")
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


MINIMA = {"beale": (3.0, 0.5), "rosenbrock": (1.0, 1.0)}
FUNCTIONS = {"beale": beale, "rosenbrock": rosenbrock}
