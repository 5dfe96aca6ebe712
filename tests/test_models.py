"""The MNIST models: shapes, parameter counts, losses, input checks and forward-mode AD."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgrad._mnist import load_mnist
from fgrad._models import (
    CNN,
    MLP,
    MODELS,
    LogisticRegression,
    accuracy,
    cross_entropy_loss,
    init_params,
    make_model,
    max_pool_2x2,
)

BATCH = 8


def _mlp_params(width: int, depth: int) -> int:
    return (784 * width + width) + (depth - 1) * (width * width + width) + (width * 10 + 10)


def _cnn_params(channels: int = 64, hidden: int = 1024) -> int:
    first = 3 * 3 * 1 * channels + channels
    other = 3 * (3 * 3 * channels * channels + channels)
    flat = 7 * 7 * channels  # 28 → 14 → 7 with "SAME" convolutions and two 2×2 pools
    return first + other + (flat * hidden + hidden) + (hidden * 10 + 10)


CASES = [
    pytest.param("logreg", {}, 7_850, id="logreg"),
    pytest.param("mlp", {}, 1_863_690, id="mlp"),
    pytest.param("mlp", {"depth": 5}, _mlp_params(1024, 5), id="mlp-depth5"),
    pytest.param("mlp", {"width": 32, "depth": 1}, _mlp_params(32, 1), id="mlp-32x1"),
    pytest.param("cnn", {}, _cnn_params(), id="cnn"),
]
FAST_CASES = [c for c in CASES if c.id != "mlp-depth5"]
MODEL_CASES = [c for c in CASES if c.id in MODELS]


@functools.cache
def _model_and_params(name: str, **kwargs: Any) -> tuple[Any, Any]:
    """A model and its params at key 0, built once per configuration (init compiles slowly)."""
    model = make_model(name, **kwargs)
    return model, init_params(model, jax.random.key(0))


def _count(params: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _batch(n: int = BATCH) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(1))
    images = jax.random.uniform(k1, (n, 28, 28, 1), jnp.float32)
    labels = jax.random.randint(k2, (n,), 0, 10, jnp.int32)
    return images, labels


def test_formulas_match_the_paper() -> None:
    assert _mlp_params(1024, 2) == 1_863_690
    assert _cnn_params() == 3_333_962


@pytest.mark.parametrize(("name", "kwargs", "count"), CASES)
def test_param_count_and_dtype(name: str, kwargs: dict, count: int) -> None:
    _, params = _model_and_params(name, **kwargs)
    assert "params" not in params  # the collection itself, not the variables dict
    assert _count(params) == count
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(("name", "kwargs", "count"), FAST_CASES)
def test_logits_loss_accuracy(name: str, kwargs: dict, count: int) -> None:
    model, params = _model_and_params(name, **kwargs)
    images, labels = _batch()
    logits = jax.jit(model.apply)({"params": params}, images)
    assert logits.shape == (BATCH, 10) and logits.dtype == jnp.float32
    loss = jax.jit(cross_entropy_loss(model))(params, images, labels)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert np.isfinite(loss) and abs(float(loss) - math.log(10)) < 0.5
    acc = jax.jit(accuracy(model))(params, images, labels)
    assert acc.shape == () and acc.dtype == jnp.float32 and 0.0 <= float(acc) <= 1.0
    expected_acc = np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(labels))
    assert float(acc) == pytest.approx(expected_acc)


def test_loss_matches_manual_cross_entropy() -> None:
    model, params = _model_and_params("logreg")
    images, labels = _batch()
    logits = np.asarray(model.apply({"params": params}, images), np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    manual = -log_softmax[np.arange(BATCH), np.asarray(labels)].mean()
    loss = cross_entropy_loss(model)(params, images, labels)
    np.testing.assert_allclose(float(loss), manual, rtol=1e-5)


def test_accuracy_accepts_uint8_labels_under_strict_promotion() -> None:
    model, params = _model_and_params("logreg")
    images, labels = _batch()
    acc = accuracy(model)(params, images, np.asarray(labels, np.uint8))
    assert float(acc) == float(accuracy(model)(params, images, labels))


def test_registry() -> None:
    assert MODELS == {"logreg": LogisticRegression, "mlp": MLP, "cnn": CNN}
    assert isinstance(make_model("mlp", width=16, depth=3), MLP)
    with pytest.raises(ValueError, match=r"^unknown model 'resnet': use one of logreg, mlp, cnn$"):
        make_model("resnet")


@pytest.mark.parametrize("depth", [0, 101])
def test_mlp_depth_range(depth: int) -> None:
    with pytest.raises(ValueError, match=r"depth must be in 1\.\.100"):
        MLP(depth=depth)


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize("shape", [(BATCH, 784), (BATCH, 28, 28), (BATCH, 32, 32, 1), (28, 28, 1)])
def test_wrong_input_shape(name: str, shape: tuple[int, ...]) -> None:
    model, params = _model_and_params(name)
    labels = np.zeros(shape[:1], np.int32)
    loss = jax.jit(cross_entropy_loss(model))
    with pytest.raises(ValueError) as err:
        loss(params, jnp.zeros(shape, jnp.float32), labels)
    message = str(err.value)
    assert "\n" not in message
    assert "(B, 28, 28, 1)" in message and str(shape) in message


def test_wrong_labels() -> None:
    model, params = _model_and_params("logreg")
    images, labels = _batch()
    with pytest.raises(ValueError, match=r"labels shaped \(8,\)"):
        cross_entropy_loss(model)(params, images, labels[:4])
    with pytest.raises(ValueError, match="integer labels"):
        cross_entropy_loss(model)(params, images, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match="floating images"):
        cross_entropy_loss(model)(params, (images * 255).astype(jnp.uint8), labels)


@pytest.mark.parametrize(("name", "kwargs", "count"), MODEL_CASES)
def test_jvp_matches_grad_dot_v(name: str, kwargs: dict, count: int) -> None:
    model, params = _model_and_params(name, **kwargs)
    images, labels = _batch()
    loss = cross_entropy_loss(model)
    f = lambda p: loss(p, images, labels)

    @jax.jit
    def both(p: Any) -> tuple[jax.Array, ...]:
        leaves, treedef = jax.tree.flatten(p)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        normals = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
        tangent = jax.tree.unflatten(treedef, normals)
        value, directional = jax.jvp(f, (p,), (tangent,))
        grad = jax.grad(f)(p)
        dot = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grad), normals, strict=True))
        g_sq = sum(jnp.vdot(g, g) for g in jax.tree.leaves(grad))
        return value, directional, dot, g_sq, f(p)

    with jax.default_matmul_precision("float32"):  # no TF32/bf16 passes on accelerators
        value, directional, dot, g_sq, direct = both(params)
    expected, g_norm = float(dot), math.sqrt(float(g_sq))

    assert directional.dtype == jnp.float32
    np.testing.assert_allclose(float(value), float(direct), rtol=1e-6)
    assert abs(expected) > 1e-3 * g_norm  # a non-degenerate direction, so the check has teeth
    # ∇f·v ~ N(0, |∇f|²) for a normal v, so |∇f| is its natural scale (float32 error ≈ 1e-6 of it).
    np.testing.assert_allclose(float(directional), expected, rtol=1e-4, atol=1e-4 * g_norm)


def test_max_pool_2x2_matches_flax_values_and_ties() -> None:
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3))
    x = x.at[0, 0:2, 0:2, 0].set(1.5)  # a window of four equal maxima
    np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)),
                                  np.asarray(flax.linen.max_pool(x, (2, 2), strides=(2, 2))))
    g = jax.grad(lambda y: max_pool_2x2(y).sum())(x)
    np.testing.assert_allclose(np.asarray(g[0, 0:2, 0:2, 0]), 0.25)  # ties share the gradient
    assert float(g.sum()) == pytest.approx(2 * 3 * 2 * 3)


class _FlaxPoolCNN(flax.linen.Module):
    """The paper's CNN written with ``nn.max_pool`` (the reference for max_pool_2x2)."""

    @flax.linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nn = flax.linen
        for _ in range(2):
            for _ in range(2):
                x = nn.relu(nn.Conv(64, (3, 3), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(1024)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)


def test_cnn_gradients_equal_flax_max_pool_on_real_mnist(mnist_dir) -> None:
    data = load_mnist(mnist_dir)
    ours, ref = cross_entropy_loss(CNN()), cross_entropy_loss(_FlaxPoolCNN())
    grad_ours, grad_ref = jax.jit(jax.grad(ours)), jax.jit(jax.grad(ref))
    params = init_params(CNN(), jax.random.key(0))
    for step in range(9):  # at init, then along a backprop SGD path
        images = jnp.asarray(data.train_images[64 * step:64 * (step + 1)])
        labels = jnp.asarray(data.train_labels[64 * step:64 * (step + 1)])
        g1, g2 = grad_ours(params, images, labels), grad_ref(params, images, labels)
        if step % 4 == 0:
            for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                           atol=1e-6 * float(jnp.max(jnp.abs(b))))
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, g2)
