"""The forward-gradient estimator (Baydin et al. 2022, Algorithm 1).

For ``f: R^n → R`` and a random tangent v with independent, zero-mean, unit-variance entries,
forward-mode AD (``jax.jvp``) returns f(θ) and the directional derivative d = ∇f(θ)·v in one
forward pass. The forward gradient

    g(θ) = (∇f(θ)·v) v

satisfies E[g] = ∇f(θ). With K tangents v_1..v_K (evaluated together by ``jax.vmap`` of one
``jax.jvp``) the estimates are combined either by their mean (unbiased, variance / K) or by
orthogonal projection of ∇f onto span(v_1..v_K) (Flügel et al. 2024), g = V (VᵀV)⁻¹ Vᵀ∇f,
which needs only the K directional derivatives Vᵀ∇f.

Data parallelism (``axis_name``): under ``jax.shard_map`` every device evaluates f on its shard of
the batch with the same tangents (drawn from a replicated key), so averaging the K directional
derivatives over devices (``lax.pmean``, K scalars) before combining gives the forward gradient
of the global-batch loss; no gradient is ever communicated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fgrad._tangents import check_distribution, sample_tangents

PyTree = Any
COMBINES = ("mean", "projection")
DERIVATIVES = ("jvp", "forward_difference", "central_difference")


class ForwardGradient(NamedTuple):
    """What :func:`forward_gradient` returns.

    Attributes:
      value: f(θ), a scalar.
      directional_derivatives: the K values ∇f(θ)·v_k, shape (K,).
      grad: the gradient estimate, a pytree like θ.
      exact_grad: ∇f(θ) by reverse mode when asked for (diagnostics only), else None.
    """

    value: jax.Array
    directional_derivatives: jax.Array
    grad: PyTree
    exact_grad: PyTree | None = None


def check_estimator_options(num_tangents: int, distribution: str, combine: str,
                            derivative: str, fd_epsilon: float) -> None:
    """Raises a one-line ValueError for options the estimator does not accept."""
    if not isinstance(num_tangents, int) or num_tangents < 1:
        raise ValueError(f"num_tangents must be an integer >= 1, got {num_tangents!r}")
    check_distribution(distribution)
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}: use one of {', '.join(COMBINES)}")
    if derivative not in DERIVATIVES:
        raise ValueError(f"unknown derivative {derivative!r}: use one of {', '.join(DERIVATIVES)}")
    if derivative != "jvp" and not fd_epsilon > 0:
        raise ValueError(f"fd_epsilon must be > 0 for finite differences, got {fd_epsilon!r}")


def _scalar(fun: Callable[[PyTree], jax.Array]) -> Callable[[PyTree], jax.Array]:
    def wrapped(params):
        out = fun(params)
        if jnp.shape(out) != ():
            raise TypeError(
                f"fun must return a scalar, got an array of shape {jnp.shape(out)}: "
                "reduce it (e.g. with .mean()) before taking a forward gradient")
        return out
    return wrapped


def device_mean(tree: PyTree, axis_name: str | None) -> PyTree:
    """The mean of ``tree`` over the devices of ``axis_name`` (``lax.pmean``); the identity
    for None.

    Args:
      tree: any pytree of arrays (local to each device).
      axis_name: a ``jax.shard_map`` mesh axis, or None.

    Returns:
      ``tree`` averaged over the axis: (1/D) Σ_devices tree.
    """
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def mean_value_and_grad(fun: Callable[[PyTree], jax.Array], params: PyTree,
                        axis_name: str | None = None) -> tuple[jax.Array, PyTree]:
    """f(θ) and ∇f(θ) by reverse mode, averaged over the devices of ``axis_name``.

    With D devices each holding f_d (the loss on its shard of the batch), returns
    ((1/D) Σ_d f_d(θ), (1/D) Σ_d ∇f_d(θ)) — an all-reduce of the n-element gradient.

    ``params`` are first cast to device-varying (``lax.pcast``): for a replicated input,
    reverse mode under ``jax.shard_map`` would otherwise sum the devices' gradients itself.

    Args:
      fun: a function of ``params`` returning a scalar.
      params: the point θ, replicated (invariant) over ``axis_name``.
      axis_name: a ``jax.shard_map`` mesh axis, or None for plain ``jax.value_and_grad``.

    Returns:
      ``(value, grad)``.
    """
    if axis_name is not None:
        params = jax.lax.pcast(params, axis_name, to="varying")
    return device_mean(jax.value_and_grad(fun)(params), axis_name)


def _tree_dot_k(tangents: PyTree, coeffs: jax.Array) -> PyTree:
    """Σ_k coeffs[k] · v_k for a pytree whose leaves have a leading K axis."""
    return jax.tree.map(
        lambda v: jnp.tensordot(coeffs.astype(v.dtype), v, axes=1), tangents)


def _gram(tangents: PyTree) -> jax.Array:
    """G_ij = v_i · v_j summed over every leaf, in float32 or wider."""
    def leaf(v):
        flat = v.reshape(v.shape[0], -1)
        return jnp.einsum("in,jn->ij", flat, flat,
                          preferred_element_type=jnp.promote_types(v.dtype, jnp.float32))
    return sum(jax.tree.leaves(jax.tree.map(leaf, tangents)))


def _directional_derivatives(fun, params, tangents, num_tangents, derivative, fd_epsilon):
    """Returns f(θ) and the K directional derivatives along the stacked tangents."""
    if derivative == "jvp":
        if num_tangents == 1:  # no batch axis: plain matmuls instead of batched ones
            v1 = jax.tree.map(lambda v: v[0], tangents)
            value, d = jax.jvp(fun, (params,), (v1,))
            return value, d[None]
        values, d = jax.vmap(lambda v: jax.jvp(fun, (params,), (v,)))(tangents)
        return values[0], d

    def shifted(sign):
        return jax.vmap(lambda v: fun(jax.tree.map(
            lambda p, t: p + (sign * fd_epsilon) * t.astype(p.dtype), params, v)))(tangents)

    value = fun(params)
    if derivative == "forward_difference":
        return value, (shifted(1.0) - value) / fd_epsilon
    return value, (shifted(1.0) - shifted(-1.0)) / (2 * fd_epsilon)


def forward_gradient(
    fun: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: jax.Array,
    *,
    num_tangents: int = 1,
    distribution: str = "normal",
    combine: str = "mean",
    derivative: str = "jvp",
    fd_epsilon: float = 1e-3,
    return_exact: bool = False,
    axis_name: str | None = None,
) -> ForwardGradient:
    """Forward-gradient estimate of ∇f(θ) from K random tangents.

    With tangents v_1..v_K and directional derivatives d_k = ∇f(θ)·v_k,

      mean:        g = (1/K) Σ_k d_k v_k                    (unbiased; Var[g_i] = (‖∇f‖² + ∇f_i²)/K
                                                             for normal v)
      projection:  g = V (VᵀV)⁻¹ d                           (orthogonal projection of ∇f onto
                                                             span V; biased, E[g] = (K/n) ∇f for
                                                             normal v)

    ``derivative="jvp"`` gets d_k exactly by forward-mode AD; ``"forward_difference"``
    ((f(θ+εv) − f(θ))/ε) and ``"central_difference"`` ((f(θ+εv) − f(θ−εv))/2ε) are the
    zeroth-order (SPSA-style) baselines, biased by O(ε) and O(ε²).

    Args:
      fun: a function of ``params`` returning a scalar.
      params: the point θ, any pytree of float arrays.
      key: PRNG key for the tangents.
      num_tangents: K ≥ 1; the K directional derivatives come from one vmapped ``jax.jvp``.
      distribution: ``"normal"`` (the paper's) or ``"rademacher"``.
      combine: ``"mean"`` or ``"projection"``.
      derivative: ``"jvp"``, ``"forward_difference"`` or ``"central_difference"``.
      fd_epsilon: ε for the finite-difference derivatives.
      return_exact: also compute ∇f(θ) by reverse mode (for diagnostics only; the estimate never
        uses it).
      axis_name: under ``jax.shard_map``, the data-parallel mesh axis: f(θ) and the d_k are
        averaged over its devices (``lax.pmean`` of K + 1 scalars) before combining, so g is the
        forward gradient of the mean loss over the devices' shards. ``key`` must be the same on
        every device. None: no communication.

    Returns:
      A :class:`ForwardGradient` with ``value``, ``directional_derivatives`` (shape (K,)),
      ``grad`` (like ``params``) and ``exact_grad`` (or None).

    Example:
      >>> f = lambda p: jnp.sum(p["w"] ** 2)
      >>> out = forward_gradient(f, {"w": jnp.ones(3)}, jax.random.key(0))
      >>> out.grad["w"].shape, out.directional_derivatives.shape
      ((3,), (1,))
    """
    check_estimator_options(num_tangents, distribution, combine, derivative, fd_epsilon)
    fun = _scalar(fun)
    tangents = sample_tangents(key, params, num_tangents, distribution)
    value, d = device_mean(_directional_derivatives(fun, params, tangents, num_tangents,
                                                    derivative, fd_epsilon), axis_name)
    if combine == "mean":
        coeffs = d / num_tangents
    else:
        gram = _gram(tangents)
        coeffs = jnp.linalg.solve(gram, d.astype(gram.dtype))
    grad = _tree_dot_k(tangents, coeffs)
    exact = mean_value_and_grad(fun, params, axis_name)[1] if return_exact else None
    return ForwardGradient(value, d, grad, exact)
