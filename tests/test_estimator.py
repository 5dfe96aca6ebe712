"""The forward-gradient estimator: exactness of jvp, unbiasedness, variance, options, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fgrad
from fgrad._estimator import _gram


def _quartic(params):
    """A non-quadratic function of a nested pytree with mixed shapes."""
    w, b, c = params["layer"]["w"], params["layer"]["b"], params["c"]
    h = jnp.tanh(w @ jnp.arange(1.0, 4.0, dtype=w.dtype) + b)
    return jnp.sum(h**2) + jnp.sum(c**4) + jnp.sum(w * jnp.sin(w))


def _params(dtype):
    k1, k2, k3 = jax.random.split(jax.random.key(42), 3)
    return {"layer": {"w": jax.random.normal(k1, (4, 3), dtype),
                      "b": jax.random.normal(k2, (4,), dtype)},
            "c": jax.random.normal(k3, (2,), dtype)}


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 5e-2),
                                        (jnp.float16, 1e-2)])
@pytest.mark.parametrize("distribution", ["normal", "rademacher"])
def test_directional_derivative_equals_grad_dot_v(dtype, rtol, distribution):
    params = _params(dtype)
    key = jax.random.key(1)
    out = fgrad.forward_gradient(_quartic, params, key, num_tangents=3,
                                 distribution=distribution, return_exact=True)
    v = fgrad.sample_tangents(key, params, 3, distribution)
    assert all(x.dtype == dtype for x in jax.tree.leaves(v))
    assert all(x.dtype == dtype for x in jax.tree.leaves(out.grad))
    grad = _flat(jax.grad(_quartic)(params))
    vflat = np.stack([_flat(jax.tree.map(lambda x, k=k: x[k], v)) for k in range(3)])
    np.testing.assert_allclose(_flat(out.exact_grad), grad, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.directional_derivatives, np.float64),
                               vflat @ grad, rtol=rtol, atol=rtol * np.abs(vflat @ grad).max())
    expected = (vflat @ grad) @ vflat / 3
    np.testing.assert_allclose(_flat(out.grad), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())


def test_rademacher_tangents_are_signs_and_normal_moments():
    params = {"a": jnp.zeros((200_000,))}
    r = fgrad.sample_tangents(jax.random.key(0), params, 1, "rademacher")["a"]
    assert set(np.unique(np.asarray(r)).tolist()) == {-1.0, 1.0}
    z = np.asarray(fgrad.sample_tangents(jax.random.key(0), params, 1, "normal")["a"],
                   np.float64).ravel()
    n = z.size  # standard errors of mean, variance, skewness, kurtosis: 1, √2, √6, √24 over √n
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(np.mean(z**3)) < 5 * np.sqrt(6 / n)
    assert abs(np.mean(z**4) - 3) < 5 * np.sqrt(96 / n)


def _samples(fun, x, num, **kw):
    keys = jax.random.split(jax.random.key(7), num)
    return np.asarray(jax.vmap(lambda k: fgrad.forward_gradient(fun, x, k, **kw).grad)(keys),
                      np.float64)


_f = lambda x: jnp.sum(jnp.array([1.0, -2.0, 0.5, 3.0, 0.0], jnp.float32) * x) + jnp.sum(x**2)
_x = jnp.array([0.3, -0.2, 0.1, 0.0, 1.0], jnp.float32)
_true = np.array([1.6, -2.4, 0.7, 3.0, 2.0])


@pytest.mark.parametrize("distribution", ["normal", "rademacher"])
def test_unbiased_and_variance_matches_theory(distribution):
    num = 200_000
    g = _samples(_f, _x, num, distribution=distribution)
    sq = np.sum(_true**2)
    var = sq + _true**2 if distribution == "normal" else sq - _true**2
    # The sample mean is within 5 standard errors of ∇f (a 1-in-10^6 event per entry if unbiased).
    assert np.all(np.abs(g.mean(0) - _true) < 5 * np.sqrt(var / num))
    np.testing.assert_allclose(g.var(0), var, rtol=0.05)


def test_k_tangents_divide_variance_by_k():
    v1 = _samples(_f, _x, 100_000, num_tangents=1).var(0)
    v4 = _samples(_f, _x, 100_000, num_tangents=4).var(0)
    np.testing.assert_allclose(v1 / v4, 4.0, rtol=0.1)


def test_projection_equals_dense_projection_onto_span():
    params = _params(jnp.float32)
    key = jax.random.key(3)
    out = fgrad.forward_gradient(_quartic, params, key, num_tangents=4, combine="projection")
    v = fgrad.sample_tangents(key, params, 4)
    vmat = np.stack([_flat(jax.tree.map(lambda x, k=k: x[k], v)) for k in range(4)]).T  # n×K
    grad = _flat(jax.grad(_quartic)(params))
    expected = vmat @ np.linalg.solve(vmat.T @ vmat, vmat.T @ grad)
    np.testing.assert_allclose(_flat(out.grad), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(_gram(v)), vmat.T @ vmat, rtol=1e-5, atol=1e-4)


def test_finite_difference_bias_shrinks_with_epsilon_as_theory():
    # f = Σ x³: the forward difference errs by 3ε Σ x v² + ε² Σ v³ (O(ε)), central by ε² Σ v³.
    fun = lambda x: jnp.sum(x**3)
    x = jnp.array([0.5, -1.0, 2.0], jnp.float32)
    key = jax.random.key(5)
    exact = fgrad.forward_gradient(fun, x, key).directional_derivatives[0]

    def err(kind, eps):
        d = fgrad.forward_gradient(fun, x, key, derivative=kind, fd_epsilon=eps)
        return float(abs(d.directional_derivatives[0] - exact))

    fwd = [err("forward_difference", e) for e in (0.1, 0.05)]
    cen = [err("central_difference", e) for e in (0.1, 0.05)]
    assert 1.6 < fwd[0] / fwd[1] < 2.4   # ≈ 2: first order
    assert 3.2 < cen[0] / cen[1] < 4.8   # ≈ 4: second order
    assert cen[1] < fwd[1]


@pytest.mark.parametrize("kwargs,match", [
    ({"num_tangents": 0}, "num_tangents"),
    ({"num_tangents": 1.5}, "num_tangents"),
    ({"distribution": "uniform"}, "distribution"),
    ({"combine": "median"}, "combine"),
    ({"derivative": "complex_step"}, "derivative"),
    ({"derivative": "central_difference", "fd_epsilon": 0.0}, "fd_epsilon"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fgrad.forward_gradient(_f, _x, jax.random.key(0), **kwargs)
    with pytest.raises(ValueError, match=match):
        fgrad.forward_gradient_source(0, **kwargs)


def test_non_scalar_function_raises():
    with pytest.raises(TypeError, match="scalar"):
        fgrad.forward_gradient(lambda x: x**2, _x, jax.random.key(0))


@pytest.mark.parametrize("combine", ["mean", "projection"])
def test_cos2_follows_its_beta_law(combine):
    """cos²(g, ∇) of normal-tangent estimates is Beta(K/2, (n−1)/2) (mean) or Beta(K/2, (n−K)/2)
    (projection): not rejected by Kolmogorov–Smirnov, while the other combine's law is."""
    import scipy.stats

    from fgrad.lab.run.estimator_quality import cos2_law

    n, k, m = 40, 16, 2000
    grad = jnp.linspace(-1.0, 2.0, n)
    fun = lambda p: jnp.vdot(grad, p["w"])  # ∇f = grad everywhere
    params = {"w": jnp.zeros(n)}

    @jax.jit
    def cos2(key):
        g = fgrad.forward_gradient(fun, params, key, num_tangents=k, combine=combine).grad["w"]
        return jnp.vdot(g, grad) ** 2 / (jnp.vdot(g, g) * jnp.vdot(grad, grad))

    samples = np.asarray(jax.vmap(cos2)(jax.random.split(jax.random.key(3), m)), np.float64)
    own = cos2_law(n, k, "normal", combine)
    other = cos2_law(n, k, "normal", "projection" if combine == "mean" else "mean")
    assert scipy.stats.kstest(samples, scipy.stats.beta(*own).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(samples, scipy.stats.beta(*other).cdf).pvalue < 1e-6
