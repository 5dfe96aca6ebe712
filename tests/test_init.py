"""Initialisation schemes of the models: ``"flax"`` (lecun_normal, zero bias) and ``"pytorch"``
(kernel and bias ~ U(−1/√fan_in, 1/√fan_in), as ``nn.Linear``/``nn.Conv2d`` default to)."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgrad._models import (
    CNN,
    INITS,
    MLP,
    MODELS,
    LogisticRegression,
    init_params,
    make_model,
    uniform_fan_in,
)

# Each layer's fan_in: in_features for Dense, in_channels·kh·kw for Conv.
FAN_INS = {
    "logreg": {"Dense_0": 784},
    "mlp": {"Dense_0": 784, "Dense_1": 1024, "Dense_2": 1024},
    "cnn": {"Conv_0": 9, "Conv_1": 576, "Conv_2": 576, "Conv_3": 576, "Dense_0": 3136,
            "Dense_1": 1024},
}
LARGE = 1000  # leaves with at least this many entries get the empirical-std check
NAMES = list(MODELS)


@functools.cache
def _params(name: str, init: str, seed: int = 0) -> Any:
    return init_params(make_model(name, init=init), jax.random.key(seed))


def _layers(params: Any) -> dict[str, dict[str, np.ndarray]]:
    return {layer: {k: np.asarray(v) for k, v in leaves.items()}
            for layer, leaves in params.items()}


def test_table() -> None:
    assert list(INITS) == ["flax", "pytorch"]
    for cls in (LogisticRegression, MLP, CNN):
        assert cls().init_scheme == "flax"


@pytest.mark.parametrize("name", NAMES)
def test_same_structure_shapes_and_dtype(name: str) -> None:
    flax_p, torch_p = _params(name, "flax"), _params(name, "pytorch")
    assert jax.tree.structure(flax_p) == jax.tree.structure(torch_p)
    assert jax.tree.map(jnp.shape, flax_p) == jax.tree.map(jnp.shape, torch_p)
    dtypes = {x.dtype for x in jax.tree.leaves(flax_p) + jax.tree.leaves(torch_p)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert set(flax_p) == set(FAN_INS[name])


@pytest.mark.parametrize("name", NAMES)
def test_pytorch_is_uniform_with_each_layers_fan_in(name: str) -> None:
    for layer, leaves in _layers(_params(name, "pytorch")).items():
        fan_in = FAN_INS[name][layer]
        assert math.prod(leaves["kernel"].shape[:-1]) == fan_in  # Flax's fan_in agrees
        bound = 1.0 / math.sqrt(fan_in)
        for kind, x in leaves.items():
            where = f"{name}/{layer}/{kind} (fan_in {fan_in})"
            assert np.all(np.abs(x) <= bound * (1 + 1e-6)), where  # float32 rounding of bound
            if x.size >= LARGE:
                std = float(np.std(x, dtype=np.float64))
                assert std == pytest.approx(bound / math.sqrt(3), rel=0.05), where
                assert float(np.max(np.abs(x))) > 0.99 * bound, where  # fills the interval
                assert abs(float(np.mean(x, dtype=np.float64))) < 0.05 * bound, where


@pytest.mark.parametrize("name", NAMES)
def test_flax_zero_bias_and_lecun_kernel(name: str) -> None:
    for layer, leaves in _layers(_params(name, "flax")).items():
        assert np.all(leaves["bias"] == 0), f"{name}/{layer}"
        kernel, fan_in = leaves["kernel"], FAN_INS[name][layer]
        if kernel.size >= LARGE:
            std = float(np.std(kernel, dtype=np.float64))
            assert std == pytest.approx(1 / math.sqrt(fan_in), rel=0.05), f"{name}/{layer}"


class _PlainMLP(nn.Module):
    """MLP(width=32, depth=1) written with Flax's default initialisers."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)


def test_flax_is_flaxs_default_bit_for_bit() -> None:
    key = jax.random.key(3)
    ours = init_params(MLP(width=32, depth=1), key)
    ref = init_params(_PlainMLP(), key)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("init", list(INITS))
def test_same_key_gives_identical_params(name: str, init: str) -> None:
    again = init_params(make_model(name, init=init), jax.random.key(0))
    for a, b in zip(jax.tree.leaves(_params(name, init)), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    first, other = _params(name, init)["Dense_0"], _params(name, init, seed=1)["Dense_0"]
    assert not np.array_equal(np.asarray(first["kernel"]), np.asarray(other["kernel"]))


@pytest.mark.parametrize("cls", [LogisticRegression, MLP, CNN])
def test_unknown_init_fails_at_construction(cls: type[nn.Module]) -> None:
    message = r"^unknown init 'xavier': use one of flax, pytorch$"
    with pytest.raises(ValueError, match=message):
        cls(init_scheme="xavier")
    with pytest.raises(ValueError, match=message):
        make_model({LogisticRegression: "logreg", MLP: "mlp", CNN: "cnn"}[cls], init="xavier")


def test_make_model_init_keyword() -> None:
    model = make_model("mlp", init="pytorch", width=16, depth=3)
    assert isinstance(model, MLP) and model.init_scheme == "pytorch" and model.depth == 3
    assert make_model("cnn", init_scheme="pytorch").init_scheme == "pytorch"
    with pytest.raises(ValueError, match="not both"):
        make_model("mlp", init="pytorch", init_scheme="flax")
    # The field does not hide flax.linen.Module.init.
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))
    assert set(variables["params"]) == {"Dense_0", "Dense_1", "Dense_2", "Dense_3"}


def test_uniform_fan_in() -> None:
    x = np.asarray(uniform_fan_in(4)(jax.random.key(0), (20_000,)))
    assert x.dtype == np.float32 and np.all(np.abs(x) <= 0.5)
    assert float(np.std(x)) == pytest.approx(0.5 / math.sqrt(3), rel=0.02)
    with pytest.raises(ValueError, match="fan_in must be at least 1"):
        uniform_fan_in(0)
