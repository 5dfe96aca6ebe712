"""The forward-gradient estimator (Baydin et al. 2022, Algorithm 1).

For ``f: R^n → R`` and a random tangent v with independent, zero-mean, unit-variance entries,
forward-mode AD (``jax.jvp``) returns f(θ) and the directional derivative d = ∇f(θ)·v in one
forward pass. The forward gradient

    g(θ) = (∇f(θ)·v) v

satisfies E[g] = ∇f(θ). With K tangents v_1..v_K (evaluated together by ``jax.vmap`` of one
``jax.jvp``) the estimates are combined either by their mean (unbiased, variance / K) or by
orthogonal projection of ∇f onto span(v_1..v_K) (Flügel et al. 2024), g = V (VᵀV)⁻¹ Vᵀ∇f,
which needs only the K directional derivatives Vᵀ∇f. The projection never forms VᵀV (whose
condition number is that of V squared): it is solved from the R factor of V = QR, in float32
(float64 when a leaf is float64) whatever the leaves' dtypes, and needs K ≤ n.

Low-rank tangents (``tangents="low_rank"``, :mod:`fgrad._lowrank`): each kernel of a flax
``nn.Dense``/``nn.Conv`` gets V = ABᵀ/√r instead of i.i.d. entries (still E[vec V vec Vᵀ] = I, so
still unbiased), and the jvp evaluates x·W + t·((x·A)·Bᵀ)/√r without ever forming V.

Data parallelism (``axis_name``): under ``jax.shard_map`` every device evaluates f on its shard of
the batch with the same tangents (drawn from a replicated key), so averaging the K directional
derivatives over devices (``lax.pmean``, K scalars) before combining gives the forward gradient
of the global-batch loss; no gradient is ever communicated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fgrad._lowrank import check_tangents, combine_low_rank, low_rank_forward_gradient
from fgrad._tangents import (
    check_distribution,
    check_float_leaves,
    check_num_tangents,
    sample_tangents,
)
from fgrad._types import PyTree

_HIGHEST = jax.lax.Precision.HIGHEST


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
                            derivative: str, fd_epsilon: float, tangents: str = "iid",
                            rank: int = 1) -> None:
    """Raises a one-line ValueError for options the estimator does not accept.

    ``num_tangents`` and ``rank`` may be any integer type (``int``, ``np.int64``, ...) but not
    bool; low-rank tangents need ``derivative="jvp"``.
    """
    check_num_tangents(num_tangents)
    check_distribution(distribution)
    if combine not in _COMBINE:
        raise ValueError(f"unknown combine {combine!r}: use one of {', '.join(COMBINES)}")
    if derivative not in _DERIVATIVE:
        raise ValueError(f"unknown derivative {derivative!r}: use one of {', '.join(DERIVATIVES)}")
    check_tangents(tangents, rank)
    if tangents == "low_rank" and derivative != "jvp":
        raise ValueError(f"tangents='low_rank' needs derivative='jvp', got {derivative!r}: the "
                         "factorised product is a forward-mode rule; use tangents='iid'")
    if derivative != "jvp" and not fd_epsilon > 0:
        raise ValueError(f"fd_epsilon must be > 0 for finite differences, got {fd_epsilon!r}")


def _scalar(fun: Callable[[PyTree], jax.Array]) -> Callable[[PyTree], jax.Array]:
    """``fun`` with its output checked to be a real scalar and promoted to at least float32
    (float64 is kept), so that f(θ) and the directional derivatives are float32 even for
    half-precision functions."""
    def wrapped(params):
        out = jnp.asarray(fun(params))
        if out.shape != ():
            raise TypeError(
                f"fun must return a scalar, got an array of shape {out.shape}: "
                "reduce it (e.g. with .mean()) before taking a forward gradient")
        if jnp.issubdtype(out.dtype, jnp.complexfloating):
            raise TypeError(f"fun must return a real scalar, got {out.dtype}: "
                            "take its real part or its absolute value first")
        return out if out.dtype == jnp.float64 else out.astype(jnp.float32)
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


def _solve_dtype(tree: PyTree) -> Any:
    """float64 if a leaf of ``tree`` is float64, else float32 (for every narrower float)."""
    wide = any(jnp.result_type(x) == jnp.float64 for x in jax.tree.leaves(tree))
    return jnp.float64 if wide else jnp.float32


def _stacked(tangents: PyTree, dtype: Any) -> jax.Array:
    """The K×n matrix whose row k is v_k flattened (leaves in pytree order), in ``dtype``."""
    return jnp.concatenate([v.reshape(v.shape[0], -1).astype(dtype)
                            for v in jax.tree.leaves(tangents)], axis=1)


def _gram(tangents: PyTree) -> jax.Array:
    """G_ij = v_i · v_j summed over every leaf, in float32 (float64 if a leaf is float64)."""
    m = _stacked(tangents, _solve_dtype(tangents))
    return jnp.matmul(m, m.T, precision=_HIGHEST)


def _mean(tangents: PyTree, d: jax.Array) -> PyTree:
    """g = (1/K) Σ_k d_k v_k."""
    return _tree_dot_k(tangents, d / d.shape[0])


def _projection(tangents: PyTree, d: jax.Array) -> PyTree:
    """g = V (VᵀV)⁺ d, the orthogonal projection of ∇f onto span(v_1..v_K) given d = Vᵀ∇f.

    V is n×K with the tangents as columns. With V = QR (Householder; only R is formed) and the
    SVD R = U S Wᵀ of the K×K factor, VᵀV = W S² Wᵀ and g = V c with c = W S⁺² Wᵀ d. For this
    minimum-norm problem (g is the least-norm solution of Vᵀg = d) the seminormal equations are
    stable (Paige 1973): rounding errors grow with cond(V), not cond(V)² as with VᵀV formed in
    floating point. Singular values below K·eps·s_max are dropped (tangents that repeat a
    direction, e.g. Rademacher draws with few parameters): g then projects onto the span V
    does have.
    """
    dtype = _solve_dtype(tangents)
    m = _stacked(tangents, dtype)
    num_tangents = m.shape[0]
    r = jnp.linalg.qr(m.T, mode="r")
    _, s, wt = jnp.linalg.svd(r)
    keep = s > s[0] * float(num_tangents * jnp.finfo(dtype).eps)
    inv_s2 = jnp.where(keep, 1 / jnp.where(keep, s, 1) ** 2, 0)
    coeffs = jnp.matmul(wt.T, inv_s2 * jnp.matmul(wt, d.astype(dtype), precision=_HIGHEST),
                        precision=_HIGHEST)
    g = jnp.matmul(coeffs, m, precision=_HIGHEST)
    leaves, treedef = jax.tree.flatten(tangents)
    out, start = [], 0
    for v in leaves:
        size = math.prod(v.shape[1:])
        out.append(g[start:start + size].reshape(v.shape[1:]).astype(v.dtype))
        start += size
    return jax.tree.unflatten(treedef, out)


def _jvp(fun, params, tangents, fd_epsilon):
    """f(θ) and d_k = ∇f(θ)·v_k by forward-mode AD (one vmapped ``jax.jvp``)."""
    del fd_epsilon
    if jax.tree.leaves(tangents)[0].shape[0] == 1:  # no batch axis: plain matmuls
        v1 = jax.tree.map(lambda v: v[0], tangents)
        value, d = jax.jvp(fun, (params,), (v1,))
        return value, d[None]
    values, d = jax.vmap(lambda v: jax.jvp(fun, (params,), (v,)))(tangents)
    return values[0], d


def _shifted(fun, params, tangents, step):
    """f(θ + step·v_k) for every k."""
    return jax.vmap(lambda v: fun(jax.tree.map(
        lambda p, t: p + step * t.astype(p.dtype), params, v)))(tangents)


def _forward_difference(fun, params, tangents, fd_epsilon):
    """f(θ) and d_k ≈ (f(θ + εv_k) − f(θ)) / ε."""
    value = fun(params)
    return value, (_shifted(fun, params, tangents, fd_epsilon) - value) / fd_epsilon


def _central_difference(fun, params, tangents, fd_epsilon):
    """f(θ) and d_k ≈ (f(θ + εv_k) − f(θ − εv_k)) / 2ε."""
    return fun(params), (_shifted(fun, params, tangents, fd_epsilon)
                         - _shifted(fun, params, tangents, -fd_epsilon)) / (2 * fd_epsilon)


# One entry per option: the names accepted are exactly these keys.
_COMBINE = {"mean": _mean, "projection": _projection}
_DERIVATIVE = {"jvp": _jvp, "forward_difference": _forward_difference,
               "central_difference": _central_difference}
COMBINES = tuple(_COMBINE)
DERIVATIVES = tuple(_DERIVATIVE)


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
    tangents: str = "iid",
    rank: int = 1,
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

    The output of ``fun`` is cast to float32 (float64 is kept) before differentiating, so f(θ)
    and the d_k are float32 for half-precision functions and the difference quotients are formed
    in float32 (no overflow beyond 65504 in float16). What ``fun`` computes inside stays in its own
    precision: a float16 tangent that overflows inside ``fun`` is still inf, and at ε = 1e-3 a
    float16 function's differences are at its rounding (use ε ≳ 3e-2 there).

    Empty ``params`` (no entries, e.g. ``{}``) give ``grad`` of the same empty structure, d = 0
    and ``value`` = f(θ), for every K, combine and derivative.

    Args:
      fun: a function of ``params`` returning a real scalar.
      params: the point θ, any pytree of floating-point arrays (integer or bool leaves raise a
        ValueError naming the leaf).
      key: PRNG key for the tangents.
      num_tangents: K ≥ 1, any integer type; the K directional derivatives come from one vmapped
        ``jax.jvp``. With ``combine="projection"``, K ≤ n (the number of entries of ``params``):
        larger K raises a ValueError.
      distribution: ``"normal"`` (the paper's) or ``"rademacher"``.
      combine: ``"mean"`` or ``"projection"`` (solved via QR in float32, or float64 when a leaf is
        float64; the result is cast back to each leaf's dtype).
      derivative: ``"jvp"``, ``"forward_difference"`` or ``"central_difference"``.
      fd_epsilon: ε for the finite-difference derivatives.
      return_exact: also compute ∇f(θ) by reverse mode (for diagnostics only; the estimate never
        uses it).
      axis_name: under ``jax.shard_map``, the data-parallel mesh axis: f(θ) and the d_k are
        averaged over its devices (``lax.pmean`` of K + 1 scalars) before combining, so g is the
        forward gradient of the mean loss over the devices' shards. ``key`` must be the same on
        every device. None: no communication.
      tangents: ``"iid"`` (every entry independent) or ``"low_rank"``: the kernel of every flax
        ``nn.Dense``/``nn.Conv`` that ``fun`` applies (found with ``nn.intercept_methods``) gets
        V = ABᵀ/√r with (m × r), (n × r) factors of ``distribution``; other leaves stay i.i.d.
        The jvp never forms V (see :mod:`fgrad._lowrank`); needs ``derivative="jvp"``.
      rank: r ≥ 1 of the low-rank tangents (ignored for ``"iid"``).

    Returns:
      A :class:`ForwardGradient` with ``value``, ``directional_derivatives`` (shape (K,)),
      ``grad`` (like ``params``) and ``exact_grad`` (or None).

    Example:
      >>> f = lambda p: jnp.sum(p["w"] ** 2)
      >>> out = forward_gradient(f, {"w": jnp.ones(3)}, jax.random.key(0))
      >>> out.grad["w"].shape, out.directional_derivatives.shape
      ((3,), (1,))
      >>> loss = lambda p: cross_entropy_loss(model)(p, images, labels)  # a flax model
      >>> out = forward_gradient(loss, params, key, tangents="low_rank", rank=1)
    """
    check_estimator_options(num_tangents, distribution, combine, derivative, fd_epsilon,
                            tangents, rank)
    num_tangents = int(num_tangents)
    check_float_leaves(params)
    fun = _scalar(fun)
    n = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))
    if combine == "projection" and 0 < n < num_tangents:  # n tangents already span R^n
        raise ValueError(
            f"combine='projection' needs num_tangents <= n, the number of parameter entries: got "
            f"num_tangents={num_tangents} > n={n}; use fewer tangents or combine='mean'")
    exact = mean_value_and_grad(fun, params, axis_name)[1] if return_exact else None
    if n == 0:  # nothing to perturb: ∇f is empty and every directional derivative is 0
        value = device_mean(fun(params), axis_name)
        return ForwardGradient(value, jnp.zeros((num_tangents,), value.dtype),
                               jax.tree.map(jnp.zeros_like, params), exact)
    if tangents == "low_rank":  # the K scalars d_k are all that devices average, as for iid
        factors, value, d = low_rank_forward_gradient(fun, params, key, num_tangents,
                                                      distribution, int(rank))
        value, d = device_mean((value, d), axis_name)
        return ForwardGradient(value, d, combine_low_rank(factors, d, combine), exact)
    v = sample_tangents(key, params, num_tangents, distribution)
    value, d = device_mean(_DERIVATIVE[derivative](fun, params, v, fd_epsilon), axis_name)
    return ForwardGradient(value, d, _COMBINE[combine](v, d), exact)
