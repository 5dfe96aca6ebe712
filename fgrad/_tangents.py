"""Random tangent directions v for forward gradients.

Any distribution whose entries are independent with zero mean and unit variance makes
``(∇f·v) v`` an unbiased gradient estimate. Two are offered:

* ``"normal"``: v_i ~ N(0, 1), the paper's choice.
* ``"rademacher"``: v_i ∈ {−1, +1} with equal probability (lowest variance of the family).

How they are drawn (the cost matters: v has as many entries as the model has parameters, and
drawing it with ``jax.random.normal`` took 60 % of an MLP forward-gradient step on CPU):

* One threefry call turns the key into a 64-bit seed per leaf. Every entry of a leaf then comes
  from a counter-based hash of (seed, position) computed with uint32 arithmetic inside the fused
  XLA computation: w = mix32(s₀ + c·(s₁ | 1)), where c is the position and mix32 the
  two-multiply xorshift finalizer (``lowbias32``). Different leaves use independent seeds; the
  K tangents of a leaf are distinct positions of one stream.
* Rademacher: one bit per sign; one hashed word gives 32 signs.
* Normal: Box–Muller, exact in distribution: with u ~ U(0, 1] and φ ~ U[0, π/2) independent,
  r = √(−2 ln u) and independent random signs s₀, s₁, the pair (s₀ r cos φ, s₁ r sin φ) is two
  independent N(0, 1) draws. Each pair uses two hashed 32-bit words: 31 bits for u (so |z|
  reaches 6.66), 24 bits for φ and two bits for the signs. ln and cos are evaluated with
  polynomials accurate to float32 rounding (no special cases or range reduction are needed on
  these domains). The radius is computed once per pair and kept; every entry then costs one
  hash, one polynomial and one store. The first half of a leaf's entries holds the cosine and
  the second half the sine coordinates of the same pairs.

Leaves wider than 32 bits per entry (float64) or with 2³¹ or more entries fall back to
``jax.random``. Leaves of at most 2¹⁶ entries are written to memory once drawn
(``_STORE_MAX_ENTRIES``) instead of being recomputed inside every consumer.

Each distribution is one entry of ``_SAMPLERS`` (its hashed float32 sampler and its
``jax.random`` fallback); ``DISTRIBUTIONS`` is the tuple of its names, and any other name is
rejected with a ValueError. Only floating-point leaves can be perturbed: integer and bool leaves
are rejected, naming the leaf.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fgrad._types import PyTree

_U32 = jnp.uint32
_SIGN = 0x80000000
_ONE_F32 = 0x3F800000
_MAX_ENTRIES = 2**31  # a leaf's hash counters (up to its size + 1) must fit in uint32
# Leaves up to this size are stored once drawn (bit-identical values): otherwise XLA fuses their
# sampler into consumers that read each entry many times, e.g. a bias tangent into the
# (batch × width) tangent of the layer's output, drawing every entry once per example (measured:
# the MLP's rank-1 normal-factor step 1.4× its Rademacher one, equal once stored). Larger leaves
# stay fused: storing 1.86 M floats made the i.i.d. MLP step slower.
_STORE_MAX_ENTRIES = 2**16
_SQRT_HALF_F32 = 0x3F3504F3
# cos(π/2·a) ≈ Σ_k _COS[k]·a^(2k) on [0, 1]: a least-squares fit on Chebyshev nodes, max error
# 2.2e-10 (below float32 rounding).
_COS = (0.999999999779905, -1.2337005342697047, 0.2536693224722675, -0.020862687547660352,
        0.0009177238820907707, -2.3824535498151445e-05)
# Cephes logf: ln(1 + f) ≈ f − f²/2 + f³·P(f) for f ∈ [√½ − 1, √2 − 1].
_LOG = (3.3333331174e-1, -2.4999993993e-1, 2.0000714765e-1, -1.6668057665e-1,
        1.4249322787e-1, -1.2420140846e-1, 1.1676998740e-1, -1.1514610310e-1,
        7.0376836292e-2)


def check_distribution(distribution: str) -> str:
    """Returns ``distribution`` if it is known, else raises a one-line ValueError."""
    if not isinstance(distribution, str) or distribution not in _SAMPLERS:
        raise ValueError(
            f"unknown tangent distribution {distribution!r}: "
            f"use one of {', '.join(DISTRIBUTIONS)}")
    return distribution


def check_num_tangents(num_tangents: int) -> int:
    """Returns K = ``num_tangents`` as an ``int`` if it is an integer ≥ 1 (any integer type, not
    bool), else raises a one-line ValueError."""
    if (isinstance(num_tangents, (bool, np.bool_)) or not isinstance(num_tangents, numbers.Integral)
            or num_tangents < 1):
        raise ValueError(f"num_tangents must be an integer >= 1, got {num_tangents!r}")
    return int(num_tangents)


def check_float_leaves(params: PyTree) -> None:
    """Raises a one-line ValueError naming the first leaf of ``params`` whose dtype is not a real
    floating-point type (tangents of integer or bool leaves would be truncated)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} has dtype {dtype}: forward gradients "
                "need real floating-point leaves; cast it (e.g. .astype(jnp.float32)) or close "
                "over it in fun instead of passing it as a parameter")


def _mix32(h: jax.Array) -> jax.Array:
    """The ``lowbias32`` finalizer: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * _U32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * _U32(0x846CA68B)
    return h ^ (h >> 16)


def hash_words(seed: jax.Array, counters: jax.Array) -> jax.Array:
    """Pseudo-random uint32 words of a stream: w_c = mix32(s₀ + c·(s₁ | 1)).

    A Weyl sequence with a random odd increment (as in SplitMix), finalized by ``_mix32``.

    Args:
        seed: uint32[2], the stream's seed (s₀, s₁).
        counters: uint32 positions c in the stream.

    Returns:
        uint32 words shaped like ``counters``.
    """
    return _mix32(seed[0] + counters * (seed[1] | _U32(1)))


def _horner(coeffs: tuple[float, ...], x: jax.Array) -> jax.Array:
    """Σ_k coeffs[k]·x^k by Horner's rule."""
    acc = jnp.full_like(x, coeffs[-1])
    for c in coeffs[-2::-1]:
        acc = acc * x + c
    return acc


def log_unit(u: jax.Array) -> jax.Array:
    """ln u for normal float32 u in (0, 1], to within 1.1e-7 relative (Cephes ``logf``).

    u = m·2^e with m ∈ [√½, √2); ln u = e ln 2 + f − f²/2 + f³P(f), f = m − 1. Unlike
    ``jnp.log`` it skips the zero/negative/inf/denormal cases, which cannot occur here, so it
    is ~25 % cheaper.

    Args:
        u: float32 values in [2⁻¹²⁶, 1].

    Returns:
        ln u, float32.
    """
    bits = lax.bitcast_convert_type(u, _U32) + _U32(_ONE_F32 - _SQRT_HALF_F32)
    e = (bits >> 23).astype(jnp.int32) - 127
    f = lax.bitcast_convert_type((bits & _U32(0x7FFFFF)) + _U32(_SQRT_HALF_F32),
                                 jnp.float32) - 1.0
    f2 = f * f
    return f + (f * f2 * _horner(_LOG, f) - 0.5 * f2) + e.astype(jnp.float32) * math.log(2)


def _with_sign(x: jax.Array, word: jax.Array, bit: int | jax.Array) -> jax.Array:
    """Flips the sign of float32 ``x`` where bit ``bit`` of ``word`` is set."""
    sign = ((word >> bit) << 31) & _U32(_SIGN)
    return lax.bitcast_convert_type(lax.bitcast_convert_type(x, _U32) ^ sign, jnp.float32)


def rayleigh(words: jax.Array) -> jax.Array:
    """r = √(−2 ln u) with u = (⌊w/2⌋ + ½)·2⁻³¹ ∈ (0, 1] from uniform uint32 words w.

    Args:
        words: uniform uint32 words.

    Returns:
        float32 radii of standard normal pairs (Rayleigh distributed, r ≤ 6.66).
    """
    u = ((words >> 1).astype(jnp.int32).astype(jnp.float32) + 0.5) * 2.0**-31
    return jnp.sqrt(-2.0 * log_unit(u))


def box_muller(r: jax.Array, angle_words: jax.Array, which: jax.Array) -> jax.Array:
    """One coordinate of the normal pair (s₀ r cos φ, s₁ r sin φ).

    φ = (π/2)·a with a = ⌊w/2⁸⌋·2⁻²⁴ ∈ [0, 1) from the angle word w, and the signs s₀, s₁ are
    bits 0 and 1 of w, so (±cos φ, ±sin φ) is uniform on the circle and the pair is two
    independent N(0, 1) draws. sin φ is computed as cos((π/2)(1 − a)) (exact in float32), so
    one polynomial serves both coordinates.

    Args:
        r: the pair's radius (:func:`rayleigh`), float32.
        angle_words: the pair's uniform uint32 angle word (broadcastable with ``which``).
        which: 0 for the cosine coordinate, 1 for the sine coordinate (uint32).

    Returns:
        The coordinate, float32.
    """
    a = (angle_words >> 8).astype(jnp.int32).astype(jnp.float32) * 2.0**-24
    a = jnp.where(which == 1, 1.0 - a, a)
    return _with_sign(r * _horner(_COS, a * a), angle_words, which)


def _normal(seed: jax.Array, size: int) -> jax.Array:
    half = (size + 1) // 2
    # The radius (the only logarithm) once per pair; XLA keeps it in memory rather than
    # recomputing it for both coordinates (it does not duplicate a sqrt into two consumers).
    r = rayleigh(hash_words(seed, lax.iota(_U32, half) * _U32(2)))
    which = lax.broadcasted_iota(_U32, (2, half), 0)
    angle_words = hash_words(seed, lax.broadcasted_iota(_U32, (2, half), 1) * _U32(2) + _U32(1))
    return box_muller(r[None, :], angle_words, which).reshape(-1)[:size]


def _stored(words: jax.Array, seed: jax.Array) -> jax.Array:
    """``words`` unchanged, divided by a runtime 1 so that XLA stores them instead of fusing
    the hash into every consumer (XLA does not duplicate a division into a consumer that reads
    each element many times; an optimization barrier is dropped before fusion on CPU)."""
    nonzero = seed[1] | _U32(1)
    return words // (nonzero // nonzero)


def _signs(seed: jax.Array, size: int) -> jax.Array:
    # One hashed word per 32 signs, stored; each sign is then a shift, a mask and an or.
    words = _stored(hash_words(seed, lax.iota(_U32, (size + 31) // 32)), seed)
    bits = (words[:, None] << lax.iota(_U32, 32)[None, :]) & _U32(_SIGN)
    return lax.bitcast_convert_type(bits | _U32(_ONE_F32), jnp.float32).reshape(-1)[:size]


class _Sampler(NamedTuple):
    """How one distribution is drawn.

    Attributes:
        hashed: ``(seed, size) -> float32[size]`` from the counter-based hash (the fast path).
        fallback: ``(key, shape, dtype) -> array`` with ``jax.random`` (float64 leaves and leaves
            with 2³¹ or more entries).
        fourth_moment: E[v_i⁴], which sets the estimator's per-entry variance
            Var[g_i] = (‖∇f‖² + (E[v⁴] − 2)∇f_i²)/K (see :func:`fourth_moment`).
    """

    hashed: Callable[[jax.Array, int], jax.Array]
    fallback: Callable[[jax.Array, tuple[int, ...], Any], jax.Array]
    fourth_moment: float


# A new distribution is one entry here; DISTRIBUTIONS and every check follow from it.
_SAMPLERS: dict[str, _Sampler] = {
    "normal": _Sampler(_normal, jax.random.normal, 3.0),
    "rademacher": _Sampler(_signs, jax.random.rademacher, 1.0),
}
DISTRIBUTIONS = tuple(_SAMPLERS)


def fourth_moment(distribution: str) -> float:
    """E[v_i⁴] of a tangent distribution (normal 3, Rademacher 1).

    With g = (1/K) Σ_k (∇f·v_k) v_k and independent zero-mean unit-variance entries,
    Var[g_i] = (‖∇f‖² + (E[v⁴] − 2) ∇f_i²) / K.

    Args:
        distribution: a name of :data:`DISTRIBUTIONS`.

    Returns:
        The fourth moment.
    """
    return _SAMPLERS[check_distribution(distribution)].fourth_moment


@partial(jax.jit, static_argnums=(1, 2, 3))
def _sample_leaf(seed: jax.Array, shape: tuple[int, ...], dtype: Any, distribution: str):
    # Jitted so that eager calls compile once per leaf shape instead of dispatching ~50 ops;
    # inside an outer jit it is inlined.
    sampler = _SAMPLERS[check_distribution(distribution)]
    size = math.prod(shape)
    if np.dtype(dtype).itemsize > 4 or size >= _MAX_ENTRIES:
        return sampler.fallback(jax.random.wrap_key_data(seed, impl="threefry2x32"), shape, dtype)
    v = sampler.hashed(seed, size)
    if size <= _STORE_MAX_ENTRIES:  # small leaves (biases, low-rank factors): stored
        v = lax.bitcast_convert_type(_stored(lax.bitcast_convert_type(v, _U32), seed), jnp.float32)
    return v.reshape(shape).astype(dtype)


def sample_tangents(key: jax.Array, params: PyTree, num_tangents: int = 1,
                    distribution: str = "normal") -> PyTree:
    """Draws ``num_tangents`` tangents shaped like ``params``.

    Every entry is independent of every other (across leaves and across the K tangents) and
    distributed exactly as N(0, 1) (``"normal"``) or uniformly on {−1, +1} (``"rademacher"``);
    the draw is a deterministic function of ``key``.

    Args:
        key: a PRNG key (typed or raw uint32).
        params: the pytree of floating-point arrays the tangents perturb; each leaf's dtype is
            kept. Integer or bool leaves raise a ValueError naming the leaf.
        num_tangents: K ≥ 1 (any integer type), the number of directions.
        distribution: ``"normal"`` or ``"rademacher"``.

    Returns:
        A pytree like ``params`` whose leaves have a leading axis of size K.

    Example:
        >>> v = sample_tangents(jax.random.key(0), {"w": jnp.zeros(3)}, 2)
        >>> v["w"].shape
        (2, 3)
    """
    check_distribution(distribution)
    num_tangents = check_num_tangents(num_tangents)
    check_float_leaves(params)
    leaves, treedef = jax.tree.flatten(params)
    if not leaves:
        return params
    seeds = jax.random.bits(key, (len(leaves), 2), jnp.uint32)
    out = [
        _sample_leaf(seeds[i], (num_tangents, *jnp.shape(x)), np.dtype(jnp.result_type(x)),
                     distribution)
        for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)
