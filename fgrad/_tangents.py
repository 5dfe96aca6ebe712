"""Random tangent directions v for forward gradients.

Any distribution whose entries are independent with zero mean and unit variance makes
``(∇f·v) v`` an unbiased gradient estimate. Two are offered:

* ``"normal"``: v_i ~ N(0, 1), the paper's choice.
* ``"rademacher"``: v_i ∈ {−1, +1} with equal probability (lowest variance of the family).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
DISTRIBUTIONS = ("normal", "rademacher")


def check_distribution(distribution: str) -> str:
    """Returns ``distribution`` if it is known, else raises a one-line ValueError."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
                f"unknown tangent distribution {distribution!r}: "
            f"use one of {', '.join(DISTRIBUTIONS)}")
    return distribution


def _sample_leaf(key: jax.Array, shape: tuple[int, ...], dtype: Any, distribution: str):
    if distribution == "normal":
        return jax.random.normal(key, shape, dtype)
    return jax.random.rademacher(key, shape, dtype)


def sample_tangents(key: jax.Array, params: PyTree, num_tangents: int = 1,
                                        distribution: str = "normal") -> PyTree:
    """Draws ``num_tangents`` tangents shaped like ``params``.

    Args:
        key: a PRNG key.
        params: the pytree of arrays the tangents perturb; each leaf's dtype is kept.
        num_tangents: K ≥ 1, the number of directions.
        distribution: ``"normal"`` or ``"rademacher"``.

    Returns:
        A pytree like ``params`` whose leaves have a leading axis of size K.

    Example:
        >>> v = sample_tangents(jax.random.key(0), {"w": jnp.zeros(3)}, 2)
        >>> v["w"].shape
        (2, 3)
    """
    check_distribution(distribution)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = [
            _sample_leaf(k, (num_tangents, *jnp.shape(x)), jnp.result_type(x), distribution)
            for k, x in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, out)
