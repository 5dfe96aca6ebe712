"""Layer constructors with a named initialisation scheme, shared by every model.

Initialisation: every model's ``init_scheme`` field (``make_model(name, init=...)``) names an
entry of :data:`INITS`, which sets ``kernel_init`` and ``bias_init`` of every ``nn.Dense`` and
``nn.Conv`` it creates. ``fan_in`` is ``in_features`` for a dense layer and
``in_channels·kh·kw`` for a convolution.

* ``"flax"`` (the default): Flax's own, kernel ~ lecun_normal = truncated normal with std
  ``1/√fan_in``, bias = 0.
* ``"pytorch"``: PyTorch's ``nn.Linear``/``nn.Conv2d`` default (``kaiming_uniform(a=√5)``, the
  paper's code), kernel and bias both ~ U(−1/√fan_in, 1/√fan_in), i.e. std ``1/√(3·fan_in)``;
  each layer's bias uses that layer's own ``fan_in``.

Both give the same params pytree (names, shapes, float32). The field is not called ``init``
because that would hide ``flax.linen.Module.init`` (which ``tabulate`` and ``lazy_init`` call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def uniform_fan_in(fan_in: int) -> Initializer:
    """An initializer drawing U(−1/√fan_in, 1/√fan_in) for any shape (PyTorch's bias init).

    Flax calls ``bias_init`` with the bias shape only, so the layer's ``fan_in`` is bound here.

    Args:
        fan_in: the layer's number of inputs per output (``in_features``, or
            ``in_channels·kh·kw`` for a convolution); at least 1.

    Returns:
        ``init(key, shape, dtype=float32)``.
    """
    if fan_in < 1:
        raise ValueError(f"fan_in must be at least 1, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)

    return init


def _flax_inits(fan_in: int) -> tuple[Initializer, Initializer]:
    """Flax's defaults: kernel ~ lecun_normal (std 1/√fan_in), bias = 0 (``fan_in`` unused)."""
    del fan_in
    return nn.initializers.lecun_normal(), nn.initializers.zeros_init()


def _pytorch_inits(fan_in: int) -> tuple[Initializer, Initializer]:
    """PyTorch's defaults: kernel and bias ~ U(−1/√fan_in, 1/√fan_in).

    The kernel's ``variance_scaling(1/3, "fan_in", "uniform")`` has limit √(3·(1/3)/fan_in) =
    1/√fan_in, with Flax's fan_in (all kernel axes but the last), which is the same fan_in.
    """
    kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return kernel, uniform_fan_in(fan_in)


#: Initialisation schemes by name: ``fan_in ↦ (kernel_init, bias_init)`` for one layer.
INITS: dict[str, Callable[[int], tuple[Initializer, Initializer]]] = {
    "flax": _flax_inits,
    "pytorch": _pytorch_inits,
}


def check_init(init: str) -> None:
    """Raises a one-line ValueError unless ``init`` is a key of :data:`INITS`."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}: use one of {', '.join(INITS)}")


def layer_inits(init: str, fan_in: int) -> tuple[Initializer, Initializer]:
    """``(kernel_init, bias_init)`` of scheme ``init`` for a layer with ``fan_in`` inputs."""
    check_init(init)
    return INITS[init](fan_in)


def dense(features: int, fan_in: int, init: str) -> nn.Dense:
    """``nn.Dense(features)`` initialised by scheme ``init`` for ``fan_in`` input features."""
    kernel_init, bias_init = layer_inits(init, fan_in)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init)


def conv(features: int, kernel_size: Sequence[int], in_channels: int, init: str,
         **kwargs: Any) -> nn.Conv:
    """``nn.Conv(features, kernel_size, **kwargs)`` initialised by scheme ``init``.

    Its fan_in is ``in_channels·kh·kw`` (no feature groups).
    """
    fan_in = in_channels * math.prod(kernel_size)
    kernel_init, bias_init = layer_inits(init, fan_in)
    return nn.Conv(features, tuple(kernel_size), kernel_init=kernel_init, bias_init=bias_init,
                   **kwargs)
