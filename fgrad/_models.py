"""The paper's MNIST models in flax.linen, and pure loss/accuracy functions of their params.

* ``"logreg"``: multinomial logistic regression, 784 → 10 (7,850 params).
* ``"mlp"``: 784 → ``depth`` × (``width``, ReLU) → 10; the default 784-1024-1024-10 has
  1,863,690 params.
* ``"cnn"``: four 3×3 convolutions with 64 channels and ReLU, a 2×2 max-pool after the second
  and the fourth, then 1024 (ReLU) → 10.

Every model takes float32 images ``(B, 28, 28, 1)`` and returns float32 logits ``(B, 10)``;
another input shape raises a one-line ValueError while tracing. Losses are pure functions of a
params pytree, so ``jax.jvp`` and ``jax.grad`` can differentiate them with respect to params.

Initialisation: every model's ``init_scheme`` field (``make_model(name, init=...)``) names an
entry of :data:`fgrad._layers.INITS` (``"flax"``, the default, or ``"pytorch"``, the paper's code's;
see :mod:`fgrad._layers`). Local losses (``local_losses=True`` on the MLP and the CNN, Ren et al.
2023): see :mod:`fgrad._local`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fgrad._layers import INITS, check_init, conv, dense, layer_inits, uniform_fan_in
from fgrad._local import block_end, check_local, head_names
from fgrad._types import PyTree

__all__ = ["CNN", "INITS", "IMAGE_SHAPE", "MLP", "MODELS", "NUM_CLASSES", "LogisticRegression",
           "accuracy", "check_init", "conv", "cross_entropy_loss", "dense", "init_params",
           "layer_inits", "make_model", "max_pool_2x2", "training_loss", "uniform_fan_in"]

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
    """Flatten, then one dense layer to ``num_classes`` logits (7,850 params for MNIST).

    ``init_scheme`` (see :data:`INITS`): ``"flax"`` (default), kernel ~ lecun_normal with std
    1/√784, bias 0; ``"pytorch"``, kernel and bias ~ U(−1/√784, 1/√784).
    """

    num_classes: int = NUM_CLASSES
    init_scheme: str = "flax"

    def __post_init__(self) -> None:
        check_init(self.init_scheme)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, 28, 28, 1)``."""
        check_images(images, "LogisticRegression")
        x = images.reshape((images.shape[0], -1))
        return dense(self.num_classes, x.shape[-1], self.init_scheme)(x)


class MLP(nn.Module):
    """Flatten, ``depth`` × (Dense(``width``), ReLU), Dense(``num_classes``).

    The defaults are the paper's 784-1024-1024-10 network (1,863,690 params). ``depth`` may be
    1..100, for depth sweeps.

    ``init_scheme`` (see :data:`INITS`) sets every layer's init, with fan_in 784 for the first
    and ``width`` for the others: ``"flax"`` (default), kernel ~ lecun_normal with std
    1/√fan_in, bias 0; ``"pytorch"``, kernel and bias ~ U(−1/√fan_in, 1/√fan_in).

    ``local_losses``: a block per hidden layer, each but the last with a local classifier
    (``head_hidden`` hidden units, 0: linear), gradients stopped between blocks
    (:mod:`fgrad._local`).
    """

    width: int = 1024
    depth: int = 2
    num_classes: int = NUM_CLASSES
    init_scheme: str = "flax"
    local_losses: bool = False
    head_hidden: int = 0

    def __post_init__(self) -> None:
        check_init(self.init_scheme)
        check_local(self.local_losses, self.head_hidden)
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
        for j in range(self.depth):
            x = nn.relu(dense(self.width, x.shape[-1], self.init_scheme)(x))
            if j < self.depth - 1:
                x = block_end(x, self.local_losses, self.head_hidden, self.init_scheme,
                              self.num_classes)
        return dense(self.num_classes, x.shape[-1], self.init_scheme)(x)


class CNN(nn.Module):
    """The paper's convolutional network.

    Conv 3×3 (64) → ReLU → Conv 3×3 (64) → ReLU → max-pool 2×2 (stride 2) → Conv 3×3 (64) →
    ReLU → Conv 3×3 (64) → ReLU → max-pool 2×2 (stride 2) → flatten (7·7·64) → Dense(1024) →
    ReLU → Dense(``num_classes``). The convolutions use ``"SAME"`` padding, so each pool halves
    28 → 14 → 7. With the defaults it has 3,333,962 params. The pools are
    :func:`max_pool_2x2` (``nn.max_pool``'s values, a cheaper backward pass on CPU).

    ``init_scheme`` (see :data:`INITS`) sets every layer's init, with fan_in 3·3·1 = 9 for the
    first convolution, 3·3·``channels`` for the others, 7·7·``channels`` and ``hidden`` for the
    dense layers: ``"flax"`` (default), kernel ~ lecun_normal with std 1/√fan_in, bias 0;
    ``"pytorch"``, kernel and bias ~ U(−1/√fan_in, 1/√fan_in).

    ``local_losses``: three blocks (each pair of convolutions with its pool, then the dense
    layers), the first two with a local classifier on their pooled output (global average
    pool, ``head_hidden`` hidden units, logits), gradients stopped between blocks
    (:mod:`fgrad._local`).
    """

    channels: int = 64
    hidden: int = 1024
    num_classes: int = NUM_CLASSES
    init_scheme: str = "flax"
    local_losses: bool = False
    head_hidden: int = 0

    def __post_init__(self) -> None:
        check_init(self.init_scheme)
        check_local(self.local_losses, self.head_hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, 28, 28, 1)``."""
        check_images(images, "CNN")
        x = images
        for _ in range(2):
            for _ in range(2):
                layer = conv(self.channels, (3, 3), x.shape[-1], self.init_scheme,
                             padding="SAME")
                x = nn.relu(layer(x))
            x = max_pool_2x2(x)
            x = block_end(x, self.local_losses, self.head_hidden, self.init_scheme,
                          self.num_classes)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(dense(self.hidden, x.shape[-1], self.init_scheme)(x))
        return dense(self.num_classes, x.shape[-1], self.init_scheme)(x)


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
        **kwargs: the model's fields, e.g. ``width=`` and ``depth=`` for the MLP;
            ``init=`` is accepted for ``init_scheme=`` (a key of :data:`INITS`).

    Returns:
        The flax module.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    if "init" in kwargs:
        if "init_scheme" in kwargs:
            raise ValueError("give init= or init_scheme=, not both")
        kwargs["init_scheme"] = kwargs.pop("init")
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


def block_losses(model: nn.Module) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """The per-block mean cross-entropies of a model with local losses (:mod:`fgrad._local`).

    Args:
        model: a flax module whose blocks end in :class:`fgrad._local.LocalHead` s (e.g.
            ``make_model("mlp", local_losses=True)``); without heads the vector has one entry.

    Returns:
        ``losses(params, images, labels)``: float32 ``(num blocks,)``, the heads' losses in call
        order, then the output's; their sum is the training objective.
    """

    def losses(params: PyTree, images: jax.Array, labels: jax.Array) -> jax.Array:
        labels = _check_labels(images, labels)
        logits, state = model.apply({"params": params}, images, mutable=["intermediates"])
        sown = state.get("intermediates", {})
        heads = [sown[n]["logits"][0] for n in head_names(sown)]
        return jnp.stack([optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
                          for z in (*heads, logits)])

    return losses


def training_loss(model: nn.Module) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """What a model trains on: :func:`block_losses` (a vector whose sum is the objective) for a
    model with ``local_losses``, else :func:`cross_entropy_loss` (a scalar)."""
    return block_losses(model) if getattr(model, "local_losses", False) else (
        cross_entropy_loss(model))
