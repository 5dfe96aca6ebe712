"""Gradient sources as optax transformations, the paper's schedule, and the test functions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fgrad

SOURCES = {"forward": lambda: fgrad.forward_gradient_source(0),
           "backprop": fgrad.backprop_source}


def _loss(p):
    return jnp.sum(p["w"] ** 2) + jnp.sum(jnp.cos(p["b"])).astype(jnp.float32)


@pytest.mark.parametrize("method", list(SOURCES))
def test_update_shapes_dtypes_and_logged_value(method):
    params = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros((2,), jnp.bfloat16)}
    tx = fgrad.make_optimizer(SOURCES[method](), 1e-2)
    state = tx.init(params)
    updates, state = tx.update(params, state, params, value_fn=_loss)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.shape == p.shape and u.dtype == p.dtype
    np.testing.assert_allclose(float(state[0].value), float(_loss(params)), rtol=1e-3)


def test_forward_state_advances_key_and_draws_new_tangents():
    tx = fgrad.forward_gradient_source(0, num_tangents=2)
    x = jnp.array([0.5, -0.5], jnp.float32)
    s0 = tx.init(x)
    u1, s1 = tx.update(x, s0, x, value_fn=fgrad.rosenbrock)
    u2, s2 = tx.update(x, s1, x, value_fn=fgrad.rosenbrock)
    k0, k1, k2 = (jax.random.key_data(s.key) for s in (s0, s1, s2))
    assert not np.array_equal(k0, k1) and not np.array_equal(k1, k2)
    assert not np.allclose(u1, u2)
    assert s1.directional_derivatives.shape == (2,)
    # Same seed, same state → same estimate.
    u1_again, _ = tx.update(x, s0, x, value_fn=fgrad.rosenbrock)
    np.testing.assert_array_equal(u1, u1_again)


@pytest.mark.parametrize("method", list(SOURCES))
def test_jitted_step_does_not_recompile(method):
    traces = []

    def value_fn(x):
        traces.append(1)  # runs only while tracing
        return fgrad.rosenbrock(x)

    tx = fgrad.make_optimizer(SOURCES[method](), 1e-3)

    @jax.jit
    def step(x, state):
        updates, state = tx.update(x, state, x, value_fn=value_fn)
        return optax.apply_updates(x, updates), state

    x = jnp.array([-1.0, 0.0], jnp.float32)
    state = tx.init(x)
    x, state = step(x, state)
    n = len(traces)
    for _ in range(3):
        x, state = step(x, state)
    assert len(traces) == n and n >= 1


@pytest.mark.parametrize("method", list(SOURCES))
@pytest.mark.parametrize("name,start,lr,steps,factor", [
    ("beale", (0.0, 0.5), 0.01, 1000, 0.1), ("rosenbrock", (-1.0, 0.0), 5e-4, 3000, 0.05)])
def test_both_methods_reduce_test_functions(method, name, start, lr, steps, factor):
    fun = fgrad.beale if name == "beale" else fgrad.rosenbrock
    tx = fgrad.make_optimizer(SOURCES[method](), lr, decay=0.0)
    x0 = jnp.array(start, jnp.float32)

    def body(carry, _):
        x, state = carry
        updates, state = tx.update(x, state, x, value_fn=fun)
        return (optax.apply_updates(x, updates), state), None

    (x, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, length=steps))((x0, tx.init(x0)))
    assert float(fun(x)) < factor * float(fun(x0))


def test_paper_schedule_and_bad_learning_rates():
    sched = fgrad.paper_schedule(2e-4, 1e-4)
    np.testing.assert_allclose(float(sched(0)), 2e-4, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10_000)), 2e-4 * math.exp(-1), rtol=1e-5)
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="learning rate"):
            fgrad.paper_schedule(bad)
        with pytest.raises(ValueError, match="learning rate"):
            fgrad.make_optimizer(fgrad.backprop_source(), bad)
    with pytest.raises(ValueError, match="optimizer"):
        fgrad.make_optimizer(fgrad.backprop_source(), 1e-3, optimizer="lbfgs2")


def test_any_optax_optimizer_chains():
    tx = fgrad.make_optimizer(fgrad.forward_gradient_source(1), 1e-2, optimizer="adam")
    x = jnp.array([0.0, 0.5], jnp.float32)
    state = tx.init(x)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int/float
        updates, _ = tx.update(x, state, x, value_fn=fgrad.beale)
    assert updates.shape == (2,) and bool(jnp.all(jnp.isfinite(updates)))


def test_test_functions_minima_and_shapes():
    assert float(fgrad.beale(jnp.array([3.0, 0.5]))) == 0.0
    assert float(fgrad.rosenbrock(jnp.ones(5))) == 0.0
    assert float(fgrad.rosenbrock(jnp.array([-1.0, 0.0]))) == 104.0
    with pytest.raises(ValueError, match="shape"):
        fgrad.beale(jnp.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        fgrad.rosenbrock(jnp.zeros(1))


def test_clip_global_norm_rescales_only_above_the_bound_and_keeps_the_norm():
    tx = fgrad.clip_global_norm(1.0)
    small = {"w": jnp.array([0.3, 0.4], jnp.float32)}
    big = {"w": jnp.array([3.0, 4.0], jnp.float32)}
    out, s = tx.update(small, tx.init(small))
    np.testing.assert_array_equal(out["w"], small["w"])  # below the bound: untouched
    np.testing.assert_allclose(float(s.grad_norm), 0.5, rtol=1e-6)
    out, s = tx.update(big, s)
    np.testing.assert_allclose(out["w"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(float(s.grad_norm), 5.0, rtol=1e-6)
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0"):
        fgrad.clip_global_norm(-1.0)


def test_clipped_chain_bounds_every_forward_gradient_step():
    c, lr = 0.5, 1e-2
    params = jnp.zeros((50,), jnp.float32)
    loss = lambda p: jnp.sum((p - 3.0) ** 2)  # ‖∇f‖ = 42 at 0: the estimate is far above c
    tx = fgrad.make_optimizer(fgrad.forward_gradient_source(0), lr, decay=0.0, clip_norm=c)
    state = tx.init(params)
    for _ in range(5):
        updates, state = tx.update(params, state, params, value_fn=loss)
        assert float(optax.tree.norm(updates)) <= lr * c * (1 + 1e-5)
        assert float(optax.tree_utils.tree_get(state, "grad_norm")) > c
        params = optax.apply_updates(params, updates)
