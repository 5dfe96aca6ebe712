"""Tangent sampling: determinism, shapes and dtypes, independence, exact N(0, 1) and ±1 laws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from fgrad._tangents import (
    DISTRIBUTIONS,
    check_distribution,
    hash_words,
    log_unit,
    sample_tangents,
)

N = 1_000_000


def _params(dtype=jnp.float32):
    return {"dense": {"w": jnp.zeros((7, 5), dtype), "b": jnp.zeros((5,), dtype)},
            "scale": jnp.zeros((), dtype)}


def _flat(x) -> np.ndarray:
    return np.asarray(x, np.float64).ravel()


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_deterministic_given_key_and_different_across_keys(distribution):
    params = _params()
    a = sample_tangents(jax.random.key(3), params, 2, distribution)
    b = sample_tangents(jax.random.key(3), params, 2, distribution)
    c = sample_tangents(jax.random.key(4), params, 2, distribution)
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert not np.array_equal(np.asarray(x), np.asarray(z))
    jitted = jax.jit(sample_tangents, static_argnums=(2, 3))(jax.random.key(3), params, 2,
                                                                distribution)
    np.testing.assert_array_equal(np.asarray(jitted["dense"]["w"]), np.asarray(a["dense"]["w"]))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("k", [1, 3])
def test_shapes_and_dtypes_per_leaf(dtype, distribution, k):
    params = _params(dtype)
    v = sample_tangents(jax.random.key(0), params, k, distribution)
    assert jax.tree.structure(v) == jax.tree.structure(params)
    for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(v)):
        assert t.shape == (k, *p.shape)
        assert t.dtype == dtype
        assert np.all(np.isfinite(_flat(t)))


def test_raw_uint32_keys_and_vmap_over_keys():
    params = {"a": jnp.zeros((9,))}
    raw = sample_tangents(jax.random.PRNGKey(1), params, 1)["a"]
    assert raw.shape == (1, 9)
    keys = jax.random.split(jax.random.key(0), 5)
    batched = jax.vmap(lambda k: sample_tangents(k, params, 2)["a"])(keys)
    assert batched.shape == (5, 2, 9)
    one = sample_tangents(keys[2], params, 2)["a"]
    np.testing.assert_array_equal(np.asarray(batched[2]), np.asarray(one))


def test_unknown_distribution_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown tangent distribution 'uniform'"):
        sample_tangents(jax.random.key(0), {"a": jnp.zeros(2)}, 1, "uniform")
    assert check_distribution("normal") == "normal"


def _normal_draws(n: int = N, seed: int = 11) -> np.ndarray:
    return _flat(sample_tangents(jax.random.key(seed), {"a": jnp.zeros((n,))}, 1)["a"])


def test_normal_moments_within_five_standard_errors():
    z = _normal_draws()
    n = z.size  # standard errors of mean, variance, skewness and excess kurtosis under N(0, 1)
    m2 = np.mean((z - z.mean()) ** 2)
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(np.mean((z - z.mean()) ** 3) / m2**1.5) < 5 * np.sqrt(6 / n)
    assert abs(np.mean((z - z.mean()) ** 4) / m2**2 - 3) < 5 * np.sqrt(24 / n)


def test_normal_ks_statistic_below_the_critical_value_at_alpha_1e_3():
    z = np.sort(_normal_draws(seed=12))
    n = z.size
    cdf = ndtr(z)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.949 / np.sqrt(n)  # Kolmogorov critical value at α = 1e-3
    # The tails reach past 4.5σ and nothing is infinite or NaN.
    assert 4.5 < np.abs(z).max() < 7.0


def test_normal_odd_sizes_have_the_right_law_too():
    v = _flat(sample_tangents(jax.random.key(2), {"a": jnp.zeros((333_333,))}, 3)["a"])
    assert v.size == 999_999
    assert abs(v.mean()) < 5 / np.sqrt(v.size) and abs(v.var() - 1) < 5 * np.sqrt(2 / v.size)


def _max_abs_corr(x: np.ndarray, y: np.ndarray) -> float:
    return abs(float(np.corrcoef(x, y)[0, 1]))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_leaves_and_tangents_are_uncorrelated(distribution):
    n = 200_000
    params = {"a": jnp.zeros((n,)), "b": jnp.zeros((n,)), "c": jnp.zeros((n,))}
    v = sample_tangents(jax.random.key(5), params, 2, distribution)
    bound = 5 / np.sqrt(n)
    a, b, c = (np.asarray(v[k], np.float64) for k in "abc")
    pairs = [(a[0], b[0]), (a[0], c[0]), (b[1], c[1]), (a[0], a[1]), (b[0], b[1])]
    for x, y in pairs:
        assert _max_abs_corr(x, y) < bound
    if distribution == "normal":  # also independent, not just uncorrelated: squares too
        for x, y in pairs:
            assert _max_abs_corr(x**2, y**2) < bound


def test_normal_entries_within_a_leaf_are_independent():
    # Box–Muller partners (first half and second half of a leaf) and neighbours.
    z = _normal_draws(400_000, seed=21)
    half = z.size // 2
    bound = 5 / np.sqrt(half)
    for x, y in [(z[:half], z[half:]), (z[:-1], z[1:])]:
        assert _max_abs_corr(x, y) < bound
        assert _max_abs_corr(x**2, y**2) < bound
        assert _max_abs_corr(np.abs(x), np.abs(y)) < bound


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rademacher_values_are_exactly_plus_minus_one_with_mean_zero(dtype):
    n = 300_007
    r = _flat(sample_tangents(jax.random.key(8), {"a": jnp.zeros((n,), dtype)}, 2,
                              "rademacher")["a"])
    assert set(np.unique(r).tolist()) == {-1.0, 1.0}
    assert abs(r.mean()) < 5 / np.sqrt(r.size)
    # Consecutive signs come from neighbouring bits of one word: they must be independent.
    assert _max_abs_corr(r[:-1], r[1:]) < 5 / np.sqrt(r.size)


def test_log_unit_matches_numpy_to_float32_precision():
    u = np.concatenate([np.geomspace(2.0**-33, 1.0, 200_001),
                        np.linspace(1e-3, 1.0, 200_001)]).astype(np.float32)
    got = np.asarray(jax.jit(log_unit)(jnp.asarray(u)), np.float64)
    ref = np.log(u.astype(np.float64))
    assert np.max(np.abs(got - ref)) < 2e-6
    big = np.abs(ref) > 1e-3
    assert np.max(np.abs(got - ref)[big] / np.abs(ref[big])) < 2e-7


def test_hash_words_are_uniform_bits():
    w = np.asarray(hash_words(jnp.array([123, 456], jnp.uint32),
                              jnp.arange(1 << 18, dtype=jnp.uint32)))
    bits = (w[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    freq = bits.mean(axis=0)
    assert np.all(np.abs(freq - 0.5) < 5 * 0.5 / np.sqrt(w.size))
    assert np.unique(w).size > 0.99 * w.size
