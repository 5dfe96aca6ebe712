"""Estimator edge cases: projection dtypes and conditioning, empty and non-float pytrees, integer
options, half-precision functions, and the tangent-distribution table."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fgrad
from fgrad._estimator import COMBINES, DERIVATIVES
from fgrad._tangents import DISTRIBUTIONS, _sample_leaf, sample_tangents


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _tangent_matrix(key, params, k, distribution="normal"):
    """The n×K matrix V of the K tangents ``forward_gradient`` draws, in float64."""
    v = sample_tangents(key, params, k, distribution)
    return np.stack([_flat(jax.tree.map(lambda x, i=i: x[i], v)) for i in range(k)], axis=1)


def _quartic(p):
    return jnp.sum(jnp.tanh(p["w"]) ** 2) + jnp.sum(p["b"] ** 4) + jnp.sum(p["w"] * p["w"])


def _quartic_params(dtype, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(k1, (3, 4), dtype), "b": jax.random.normal(k2, (5,), dtype)}


# 1. Projection for every float dtype (the Gram/solve dtype used to be a promotion error).

@pytest.mark.parametrize("dtype,rtol", [(jnp.bfloat16, 2e-2), (jnp.float16, 2e-3)])
def test_projection_works_for_half_precision_leaves(dtype, rtol):
    params = _quartic_params(dtype)
    key = jax.random.key(3)
    out = fgrad.forward_gradient(_quartic, params, key, num_tangents=5, combine="projection")
    assert all(g.dtype == dtype for g in jax.tree.leaves(out.grad))
    vmat = _tangent_matrix(key, params, 5)
    d = np.asarray(out.directional_derivatives, np.float64)  # the d the solve was given
    expected = np.linalg.pinv(vmat.T) @ d
    np.testing.assert_allclose(_flat(out.grad), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())


def test_projection_works_for_mixed_and_float64_leaves():
    with jax.enable_x64(True):
        params = {"w": _quartic_params(jnp.float64)["w"],
                  "b": _quartic_params(jnp.float32)["b"]}
        key = jax.random.key(4)
        fun = lambda p: (jnp.sum(jnp.tanh(p["w"]) ** 2)
                         + jnp.sum(p["b"] ** 4).astype(jnp.float64))
        out = fgrad.forward_gradient(fun, params, key, num_tangents=6, combine="projection")
        assert out.directional_derivatives.dtype == jnp.float64
        assert out.grad["w"].dtype == jnp.float64 and out.grad["b"].dtype == jnp.float32
        vmat = _tangent_matrix(key, params, 6)
        expected = np.linalg.pinv(vmat.T) @ np.asarray(out.directional_derivatives)
        # Leaves in pytree order: "b" (5 entries), then "w" (12).
        np.testing.assert_allclose(np.asarray(out.grad["w"]).ravel(), expected[5:],
                                   rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(np.asarray(out.grad["b"]), expected[:5], rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())


# 2. Projection with K > n is rejected; K = n reproduces ∇f, stably.

_c = np.linspace(-1.0, 2.0, 10)
_lin = lambda x: jnp.sum(jnp.asarray(_c, jnp.float32) * x) + 0.5 * jnp.sum(x * x)


def test_projection_rejects_more_tangents_than_parameters():
    x = jnp.ones(3, jnp.float32)
    msg = "num_tangents=4 > n=3"
    with pytest.raises(ValueError, match=msg) as info:
        fgrad.forward_gradient(lambda p: jnp.sum(p**2), x, jax.random.key(0), num_tangents=4,
                               combine="projection")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=msg):  # at trace time, inside jit too
        jax.jit(lambda p, k: fgrad.forward_gradient(lambda q: jnp.sum(q**2), p, k,
                                                    num_tangents=4, combine="projection").grad
                )(x, jax.random.key(0))
    # The mean is defined for any K.
    out = fgrad.forward_gradient(lambda p: jnp.sum(p**2), x, jax.random.key(0), num_tangents=4)
    assert np.all(np.isfinite(np.asarray(out.grad)))


def test_projection_with_k_equal_n_reproduces_the_exact_gradient_over_many_draws():
    x = jnp.linspace(-0.5, 0.5, 10).astype(jnp.float32)
    exact = _c + np.asarray(x, np.float64)
    keys = jax.random.split(jax.random.key(11), 4000)
    g = np.asarray(jax.jit(jax.vmap(lambda k: fgrad.forward_gradient(
        _lin, x, k, num_tangents=10, combine="projection").grad))(keys), np.float64)
    assert np.all(np.isfinite(g))
    err = np.linalg.norm(g - exact, axis=1) / np.linalg.norm(exact)
    # float32: the error grows like cond(V)·eps; cond(V) of a 10×10 Gaussian has a heavy tail.
    assert np.median(err) < 1e-5
    assert np.quantile(err, 0.99) < 1e-3
    assert err.max() < 0.25


def test_projection_with_dependent_rademacher_tangents_is_finite_and_exact():
    # n = 3, K = 3 Rademacher: most draws repeat a direction up to sign (a singular Gram
    # matrix); the projection onto the span they do have is still well defined.
    x = jnp.array([0.3, -0.2, 0.7], jnp.float32)
    fun = lambda p: jnp.sum(jnp.array([1.0, -2.0, 0.5], jnp.float32) * p) + jnp.sum(p**3)
    exact = np.array([1.0, -2.0, 0.5]) + 3 * np.asarray(x, np.float64) ** 2
    keys = jax.random.split(jax.random.key(5), 200)
    g = np.asarray(jax.vmap(lambda k: fgrad.forward_gradient(
        fun, x, k, num_tangents=3, distribution="rademacher", combine="projection").grad)(keys))
    assert np.all(np.isfinite(g))
    singular = 0
    for k, gk in zip(keys, g):
        vmat = _tangent_matrix(k, x, 3, "rademacher")
        singular += np.linalg.matrix_rank(vmat) < 3
        expected = vmat @ np.linalg.pinv(vmat) @ exact
        np.testing.assert_allclose(gk, expected, rtol=1e-5, atol=1e-5)
    assert singular > 50  # the case is exercised


# 3. Empty parameter pytrees.

_const = lambda p: jnp.asarray(2.5, jnp.float32)


@pytest.mark.parametrize("params", [{}, {"a": {}, "b": ()}, {"a": jnp.zeros((0, 2))}])
@pytest.mark.parametrize("num_tangents", [1, 3])
@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("derivative", DERIVATIVES)
def test_empty_params_give_empty_gradients(params, num_tangents, combine, derivative):
    def run(p, key):
        return fgrad.forward_gradient(_const, p, key, num_tangents=num_tangents,
                                      combine=combine, derivative=derivative,
                                      return_exact=True)

    for out in (run(params, jax.random.key(0)), jax.jit(run)(params, jax.random.key(0))):
        assert jax.tree.structure(out.grad) == jax.tree.structure(params)
        assert jax.tree.structure(out.exact_grad) == jax.tree.structure(params)
        for g, p in zip(jax.tree.leaves(out.grad), jax.tree.leaves(params)):
            assert g.shape == p.shape and g.dtype == p.dtype
        assert float(out.value) == 2.5
        assert out.directional_derivatives.shape == (num_tangents,)
        np.testing.assert_array_equal(np.asarray(out.directional_derivatives), 0.0)


@pytest.mark.parametrize("combine", COMBINES)
def test_empty_params_through_the_optax_source(combine):
    tx = optax.chain(fgrad.forward_gradient_source(0, num_tangents=3, combine=combine),
                     optax.sgd(0.1))
    state = tx.init({})
    updates, state = jax.jit(lambda s: tx.update({}, s, {}, value_fn=_const))(state)
    assert updates == {}
    assert float(state[0].value) == 2.5
    assert state[0].directional_derivatives.shape == (3,)


# 4. Integer and bool leaves are rejected, naming the leaf.

@pytest.mark.parametrize("leaf,dtype", [(jnp.array(3), "int32"), (jnp.array([True]), "bool"),
                                        (np.arange(2, dtype=np.uint8), "uint8")])
def test_non_float_leaves_are_rejected_by_path(leaf, dtype):
    params = {"w": jnp.ones(3), "meta": {"steps": leaf}}
    fun = lambda p: jnp.sum(p["w"] ** 2)
    where = re.escape("params['meta']['steps']")
    for call in (lambda: fgrad.forward_gradient(fun, params, jax.random.key(0)),
                 lambda: sample_tangents(jax.random.key(0), params, 2)):
        with pytest.raises(ValueError, match=f"{where} has dtype {dtype}") as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape("params has dtype int32")):
        sample_tangents(jax.random.key(0), jnp.arange(3), 1)


# 5. Any integer type for the seed and for num_tangents (but not bool).

@pytest.mark.parametrize("integer", [np.int64, np.int32, np.uint8, int])
def test_numpy_integer_seed_and_num_tangents(integer):
    fun = lambda p: jnp.sum(p**2)
    x = jnp.array([1.0, -2.0, 0.5], jnp.float32)
    out = fgrad.forward_gradient(fun, x, jax.random.key(0), num_tangents=integer(2))
    assert out.directional_derivatives.shape == (2,)

    def step(seed, k):
        tx = fgrad.forward_gradient_source(seed, num_tangents=k)
        return tx.update(x, tx.init(x), x, value_fn=fun)

    (u_np, s_np), (u_int, _) = step(integer(3), integer(2)), step(3, 2)
    np.testing.assert_array_equal(np.asarray(u_np), np.asarray(u_int))
    assert s_np.directional_derivatives.shape == (2,)


def test_bool_seed_and_num_tangents_are_rejected():
    with pytest.raises(ValueError, match="num_tangents"):
        fgrad.forward_gradient(lambda p: jnp.sum(p**2), jnp.ones(2), jax.random.key(0),
                               num_tangents=True)
    with pytest.raises(ValueError, match="num_tangents"):
        fgrad.forward_gradient_source(0, num_tangents=np.int64(0))
    with pytest.raises(ValueError, match="num_tangents"):
        sample_tangents(jax.random.key(0), jnp.ones(2), True)
    for seed in (True, 1.5, "0"):
        with pytest.raises(TypeError, match="seed"):
            fgrad.forward_gradient_source(seed)


# 6. Functions returning float16: value and directional derivatives in float32.

@pytest.mark.parametrize("derivative", DERIVATIVES)
def test_half_precision_function_gives_float32_value_and_derivatives(derivative):
    x = _quartic_params(jnp.float16)
    out = fgrad.forward_gradient(_quartic, x, jax.random.key(0), num_tangents=2,
                                 derivative=derivative)
    assert out.value.dtype == jnp.float32
    assert out.directional_derivatives.dtype == jnp.float32
    assert all(g.dtype == jnp.float16 for g in jax.tree.leaves(out.grad))


@pytest.mark.parametrize("derivative", ["forward_difference", "central_difference"])
def test_finite_difference_of_float16_function_beyond_65504_is_finite(derivative):
    # f's values stay in float16 range (|f| < 1000) but ∇f·v ≈ 1e5·Σv does not: the
    # difference quotient used to be formed (and overflow) in float16.
    fun = lambda p: (jnp.sum(p) * 1e5).astype(jnp.float16)
    x = jnp.zeros(4, jnp.float32)
    key = jax.random.key(2)
    out = fgrad.forward_gradient(fun, x, key, num_tangents=8, derivative=derivative)
    exact = 1e5 * _tangent_matrix(key, x, 8).sum(axis=0)
    assert np.abs(exact).max() > 65504
    d = np.asarray(out.directional_derivatives, np.float64)
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d, exact, rtol=2e-3, atol=100.0)


def test_finite_difference_with_float16_params_beyond_65504_is_finite():
    fun = lambda p: jnp.sum(p) * jnp.float16(60000.0)
    x = jnp.zeros(4, jnp.float16)
    key = jax.random.key(6)
    out = fgrad.forward_gradient(fun, x, key, num_tangents=8, derivative="forward_difference")
    v = sample_tangents(key, x, 8)
    # The perturbation is formed in float16 (as the parameters are): compare with its sum.
    exact = 60000.0 * np.asarray((1e-3 * v).astype(jnp.float16), np.float64).sum(axis=1) / 1e-3
    assert np.abs(exact).max() > 65504
    d = np.asarray(out.directional_derivatives, np.float64)
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d, exact, rtol=5e-3, atol=100.0)


# The tangent distributions: one table, unknown names rejected everywhere, values unchanged.

def test_unknown_distribution_is_rejected_by_every_sampling_path():
    seed = jnp.array([1, 2], jnp.uint32)
    with pytest.raises(ValueError, match="unknown tangent distribution 'uniform'"):
        _sample_leaf(seed, (2, 3), np.dtype(np.float32), "uniform")
    with jax.enable_x64(True):  # float64 leaves take the jax.random path
        with pytest.raises(ValueError, match="unknown tangent distribution 'uniform'"):
            _sample_leaf(seed, (2, 3), np.dtype(np.float64), "uniform")
        for name in DISTRIBUTIONS:
            assert _sample_leaf(seed, (2, 3), np.dtype(np.float64), name).dtype == np.float64


def test_tangent_values_are_unchanged():
    params = {"a": jnp.zeros((5,)), "b": jnp.zeros((3,), jnp.bfloat16)}
    normal = sample_tangents(jax.random.key(0), params, 2, "normal")
    signs = sample_tangents(jax.random.key(0), params, 2, "rademacher")
    np.testing.assert_array_equal(np.asarray(normal["a"]), np.array(
        [[0.2819020450115204, 0.9386653900146484, 1.2348133325576782, 1.5657440423965454,
          0.16982552409172058],
         [-0.4465031325817108, -0.24201327562332153, -0.9605086445808411, 0.5665050745010376,
          0.26722627878189087]], np.float32))
    np.testing.assert_array_equal(np.asarray(normal["b"], np.float32), np.array(
        [[-0.1787109375, 1.5, 0.19921875], [-1.3515625, -0.80859375, -0.51171875]], np.float32))
    np.testing.assert_array_equal(np.asarray(signs["a"]), np.array(
        [[-1, -1, 1, -1, -1], [-1, -1, 1, -1, 1]], np.float32))
    np.testing.assert_array_equal(np.asarray(signs["b"], np.float32), np.array(
        [[1, -1, -1], [1, 1, -1]], np.float32))
