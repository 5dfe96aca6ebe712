"""The control source: exact gradient plus noise with the forward gradient's mean and covariance."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fgrad
from fgrad._transforms import noisy_backprop_source
from fgrad.train import source_value

G = jnp.array([1.0, -2.0, 0.5])


def _draws(source, n: int) -> np.ndarray:
    x = jnp.zeros(3)
    f = lambda p: jnp.dot(G, p)

    def one(k):
        state = source.init(x)._replace(key=k)
        return source.update(x, state, x, value_fn=f)[0]

    return np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(1), n)), np.float64)


def test_noise_has_the_forward_gradients_mean_and_covariance():
    n = 200_000
    g = np.asarray(G, np.float64)
    theory = (g @ g) * np.eye(3) + np.outer(g, g)  # Cov[(g·v) v] for v ~ N(0, I)
    for source in (noisy_backprop_source(0), fgrad.forward_gradient_source(0)):
        u = _draws(source, n)
        # standard error of a mean entry: sqrt(theory_ii / n) ≈ 0.007; of a covariance ≈ 0.03
        np.testing.assert_allclose(u.mean(0), g, atol=0.04)
        np.testing.assert_allclose(np.cov(u.T), theory, atol=0.25, rtol=0.03)


def test_noisy_backprop_trains_in_a_chain_and_logs_its_value():
    tx = optax.chain(noisy_backprop_source(3), optax.sgd(1e-3))
    x = jnp.array([-1.0, 0.0])
    state = tx.init(x)
    for _ in range(3):
        updates, state = tx.update(x, state, x, value_fn=fgrad.rosenbrock)
        x = optax.apply_updates(x, updates)
    assert np.all(np.isfinite(np.asarray(x)))
    assert float(source_value(state)) > 0
