"""The paper's MNIST models in flax.linen, and pure loss/accuracy functions of their params.

* ``"logreg"``: multinomial logistic regression, 784 → 10 (7,850 params).
* ``"mlp"``: 784 → ``depth`` × (``width``, ReLU) → 10; the default 784-1024-1024-10 has
  1,863,690 params.
* ``"cnn"``: four 3×3 convolutions with 64 channels and ReLU, a 2×2 max-pool after the second
  and the fourth, then 1024 (ReLU) → 10.

Every model takes float32 images ``(B, 28, 28, 1)`` and returns float32 logits ``(B, 10)``;
another input shape raises a one-line ValueError while tracing. Losses are pure functions of a
params pytree, so ``jax.jvp`` and ``jax.grad`` can differentiate them with respect to params.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
MAX_DEPTH = 100


def check_images(images: jax.Array, name: str) -> None:
    """Raises a one-line ValueError unless ``images`` is floating and shaped ``(B, 28, 28, 1)``.

    Args:
        images: the model's input (its static shape and dtype are all that is read).
        name: the model's name, for the message.
    """
    shape = tuple(jnp.shape(images))
    if len(shape) != 1 + len(IMAGE_SHAPE) or shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{name} expects images shaped (B, {', '.join(map(str, IMAGE_SHAPE))}), got {shape}"
        )
    if not jnp.issubdtype(jnp.result_type(images), jnp.floating):
        raise ValueError(
            f"{name} expects floating images in [0, 1], got dtype {jnp.result_type(images)}"
        )


class LogisticRegression(nn.Module):
    """Flatten, then one dense layer to ``num_classes`` logits (7,850 params for MNIST)."""

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, 28, 28, 1)``."""
        check_images(images, "LogisticRegression")
        x = images.reshape((images.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """Flatten, ``depth`` × (Dense(``width``), ReLU), Dense(``num_classes``).

    The defaults are the paper's 784-1024-1024-10 network (1,863,690 params). ``depth`` may be
    1..100, for depth sweeps.
    """

    width: int = 1024
    depth: int = 2
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"MLP depth must be in 1..{MAX_DEPTH}, got {self.depth}")
        if self.width < 1:
            raise ValueError(f"MLP width must be at least 1, got {self.width}")
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, 28, 28, 1)``."""
        check_images(images, "MLP")
        x = images.reshape((images.shape[0], -1))
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
    """The paper's convolutional network.

    Conv 3×3 (64) → ReLU → Conv 3×3 (64) → ReLU → max-pool 2×2 (stride 2) → Conv 3×3 (64) →
    ReLU → Conv 3×3 (64) → ReLU → max-pool 2×2 (stride 2) → flatten (7·7·64) → Dense(1024) →
    ReLU → Dense(``num_classes``). The convolutions use ``"SAME"`` padding, so each pool halves
    28 → 14 → 7. With the defaults it has 3,333,962 params. The pools are
    :func:`max_pool_2x2` (``nn.max_pool``'s values, a cheaper backward pass on CPU).
    """

    channels: int = 64
    hidden: int = 1024
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, 28, 28, 1)``."""
        check_images(images, "CNN")
        x = images
        for _ in range(2):
            for _ in range(2):
                x = nn.relu(nn.Conv(self.channels, (3, 3), padding="SAME")(x))
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pool with stride 2 of ``x`` shaped ``(B, H, W, C)`` (H, W even).

    The same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, written as a reshape and a
    max over the two window axes. Its backward pass is a broadcast compare and a multiply
    instead of ``select_and_scatter``, which XLA:CPU runs slowly: the CNN's backprop step drops
    from ~4.9× to ~3.7× the cost of f (batch 64, 2-core CPU, experiments/bench.py). Gradients
    equal ``nn.max_pool``'s except where a window has several equal maxima: ``nn.max_pool``
    sends the gradient to the first, this splits it equally among them. After a ReLU such ties
    are (almost always) zeros, where the ReLU's zero derivative removes the difference
    (tests/test_models.py checks equal gradients on real MNIST batches).

    Args:
        x: activations ``(B, H, W, C)``.

    Returns:
        ``(B, H/2, W/2, C)``.
    """
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


MODELS: dict[str, type[nn.Module]] = {"logreg": LogisticRegression, "mlp": MLP, "cnn": CNN}


def make_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a model by name.

    Args:
        name: ``"logreg"``, ``"mlp"`` or ``"cnn"``.
        **kwargs: the model's fields, e.g. ``width=`` and ``depth=`` for the MLP.

    Returns:
        The flax module.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def init_params(
    model: nn.Module, key: jax.Array, input_shape: Sequence[int] = (1, *IMAGE_SHAPE)
) -> PyTree:
    """Initializes a model's parameters.

    Args:
        model: a flax module from :func:`make_model`.
        key: a PRNG key.
        input_shape: the shape of a dummy float32 input batch.

    Returns:
        The ``"params"`` collection, a pytree of float32 arrays.
    """
    variables = model.init(key, jnp.zeros(tuple(input_shape), jnp.float32))
    return variables["params"]


def _check_labels(images: jax.Array, labels: jax.Array) -> jax.Array:
    """``labels`` as int32 after checking they are integers shaped ``(B,)`` for ``images``."""
    shape, batch = tuple(jnp.shape(labels)), jnp.shape(images)[0]
    if shape != (batch,):
        raise ValueError(f"expected labels shaped ({batch},) for {batch} images, got {shape}")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"expected integer labels, got dtype {jnp.result_type(labels)}")
    return jnp.asarray(labels).astype(jnp.int32)


def cross_entropy_loss(model: nn.Module) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """The mean softmax cross-entropy of ``model`` as a pure function of its params.

    Args:
        model: a flax module mapping images ``(B, 28, 28, 1)`` to logits ``(B, C)``.

    Returns:
        ``loss(params, images, labels)``: a float32 scalar, for integer labels ``(B,)``.
    """

    def loss(params: PyTree, images: jax.Array, labels: jax.Array) -> jax.Array:
        labels = _check_labels(images, labels)
        logits = model.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss


def accuracy(model: nn.Module) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """The classification accuracy of ``model`` as a pure function of its params.

    Args:
        model: a flax module mapping images ``(B, 28, 28, 1)`` to logits ``(B, C)``.

    Returns:
        ``accuracy(params, images, labels)``: the float32 fraction in ``[0, 1]`` of the
        integer labels ``(B,)`` that the argmax of the logits matches.
    """

    def acc(params: PyTree, images: jax.Array, labels: jax.Array) -> jax.Array:
        labels = _check_labels(images, labels)
        logits = model.apply({"params": params}, images)
        hits = jnp.argmax(logits, axis=-1) == labels
        return hits.astype(jnp.float32).mean()

    return acc
