"""Local losses (Ren, Kornblith, Liao and Hinton, ICLR 2023): blocks with their own classifiers.

A model built with ``local_losses=True`` (fgrad's MLP: one block per hidden layer; the CNN: one
block per pair of convolutions with its max-pool, and the dense layers as the last block) calls
:func:`block_end` on the output h_b of every block but the last. There a :class:`LocalHead`
(global average pool for images, an optional hidden layer of ``head_hidden`` ReLU units, then
``num_classes`` logits) reads h_b and sows its logits, and the next block receives
``stop_gradient(h_b)``. The objective is the sum of the blocks' mean cross-entropies,

    F(θ) = Σ_b L_b(θ),   L_b = the loss of block b's head (the last block's: the model's output),

and because of the stop gradients ∂F/∂θ_b = ∂L_b/∂θ_b: each block learns from its own loss only.
Backprop of F is "local greedy backprop"; a weight-perturbed forward gradient estimates the same
gradient; activity perturbation (:mod:`fgrad._activity`) uses, for the layers of block b, block
b's own directional derivative d_{b,i} = ∇_{z_b} L_{b,i} · u_{b,i} (the tangent of L_b, which no
other block's noise reaches), so its variance is that of block b's local problem, not of the
whole network's. One jvp of the vector (L_0, …, L_{nb−1}) serves all blocks.

:func:`fgrad._models.block_losses` gives that vector (heads in call order, then the output) and
:func:`fgrad._models.training_loss` returns it for a model with local losses (the scalar loss
otherwise); :func:`fgrad._models.cross_entropy_loss` and ``accuracy`` always use the model's own
output (so evaluation is unchanged). Blocks are delimited in call order: every ``nn.Dense`` /
``nn.Conv`` call made before the first :class:`LocalHead` call returns (the head's own layers
included) is in block 0, and so on.

Example:
  >>> model = make_model("mlp", local_losses=True)       # 2 blocks: Dense_0 + head, Dense_1-2
  >>> block_losses(model)(params, images, labels).shape  # (2,)
"""

from __future__ import annotations

import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fgrad._layers import dense

HEAD_PREFIX = "LocalHead_"  # flax's automatic name of the k-th head: LocalHead_0, LocalHead_1, ...


class LocalHead(nn.Module):
    """A block's auxiliary classifier: [global average pool] → [Dense(hidden), ReLU] → logits.

    Sows its logits into the ``"intermediates"`` collection under ``"logits"`` and returns them.
    """

    num_classes: int
    hidden: int = 0
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 4:  # (B, H, W, C) feature maps: average over positions
            x = jnp.mean(x, axis=(1, 2))
        x = x.reshape((x.shape[0], -1))
        if self.hidden:
            x = nn.relu(dense(self.hidden, x.shape[-1], self.init_scheme)(x))
        logits = dense(self.num_classes, x.shape[-1], self.init_scheme)(x)
        self.sow("intermediates", "logits", logits)
        return logits


def check_local(local_losses: bool, head_hidden: int) -> None:
    """Raises a one-line ValueError for a bad ``local_losses`` or ``head_hidden`` model field."""
    if not isinstance(local_losses, (bool, np.bool_)):
        raise ValueError(f"local_losses must be True or False, got {local_losses!r}: pass "
                         "model_kwargs.local_losses=True or False")
    if (isinstance(head_hidden, (bool, np.bool_)) or not isinstance(head_hidden, numbers.Integral)
            or head_hidden < 0):
        raise ValueError(f"head_hidden must be an integer >= 0 (0: a linear head), got "
                         f"{head_hidden!r}: pass model_kwargs.head_hidden=0 or more")


def block_end(x: jax.Array, enabled: bool, head_hidden: int, init_scheme: str,
              num_classes: int) -> jax.Array:
    """The end of a block inside a model's compact ``__call__``: with ``enabled``, applies a
    :class:`LocalHead` to ``x`` and returns ``stop_gradient(x)`` for the next block; else ``x``."""
    if not enabled:
        return x
    LocalHead(num_classes, head_hidden, init_scheme)(x)
    return jax.lax.stop_gradient(x)


def head_names(intermediates: dict) -> list[str]:
    """The sown heads' names in call order (``LocalHead_0``, ``LocalHead_1``, ...)."""
    names = [k for k in intermediates if k.startswith(HEAD_PREFIX)]
    return sorted(names, key=lambda k: int(k[len(HEAD_PREFIX):]))
