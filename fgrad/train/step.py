"""The training step: state, on-device batches, ``train_step``, evaluation and diagnostics.

``train_step`` draws its minibatch on the device from precomputed per-epoch permutations, so no
host→device copy happens per step, and returns the new state with a dict of per-step
measurements computed inside jit (``{"loss": f(θ)}``, the value the gradient source saw), as
big_vision's ``update_fn`` does. :func:`make_multi_step` runs S steps per compiled call (a
``lax.scan`` when S > 1), stacking the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fgrad._models import IMAGE_SHAPE, NUM_CLASSES, accuracy, cross_entropy_loss
from fgrad._transforms import gradient_diagnostics
from fgrad._types import PyTree

Measurements = dict[str, jax.Array]
StepFn = Callable[["TrainState", "Data"], tuple["TrainState", Measurements]]


class TrainState(NamedTuple):
    """Parameters, optimizer state (the gradient source's PRNG key included) and step count."""

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array


class Data(NamedTuple):
    """Device-resident training data and the per-epoch permutations (epochs, N)."""

    images: jax.Array
    labels: jax.Array
    perms: jax.Array


TRAIN_EXAMPLES = 60_000  # MNIST's training set


def synthetic_data(batch_size: int, seed: int = 0, num_examples: int = TRAIN_EXAMPLES) -> Data:
    """A random data set of ``num_examples`` images in [0, 1) with labels and one random epoch
    permutation, as the training loop's :class:`Data`: steps gather their minibatches from it
    as they do from MNIST's 60,000 training images (at least one batch)."""
    n = max(int(num_examples), batch_size)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    images = jax.random.uniform(k1, (n, *IMAGE_SHAPE), jnp.float32)
    labels = jax.random.randint(k2, (n,), 0, NUM_CLASSES, jnp.int32)
    return Data(images, labels, jax.random.permutation(k3, n).astype(jnp.int32)[None])


def data_bytes(data: Data) -> int:
    """Bytes of a :class:`Data` (images, labels, permutations): a call argument that
    :func:`memory` leaves out of a step's memory."""
    return sum(int(x.nbytes) for x in data)


def init_state(params: PyTree, tx: optax.GradientTransformation) -> TrainState:
    """The :class:`TrainState` at step 0 for ``params`` and optimizer ``tx``."""
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def source_value(opt_state: optax.OptState) -> jax.Array:
    """f(θ) of the last update, read from the gradient source's state by field name
    (``optax.tree_utils.tree_get(opt_state, "value")``), wherever the source sits in the chain.

    Args:
      opt_state: the state of an optax chain holding one fgrad gradient source.

    Returns:
      The float32 scalar the source's ``value`` field holds.
    """
    return optax.tree_utils.tree_get(opt_state, "value")


def epoch_permutations(key: jax.Array, num_examples: int, batch_size: int, steps: int
                       ) -> jax.Array:
    """One random permutation of the training set per epoch needed for ``steps`` steps.

    Args:
      key: PRNG key of the data order.
      num_examples: N, the training set's size.
      batch_size: B.
      steps: the number of training steps the permutations must cover.

    Returns:
      int32 array (epochs, N), epochs = ⌈steps / ⌊N/B⌋⌉.
    """
    per_epoch = num_examples // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the training set "
                         f"({num_examples} examples)")
    epochs = max(1, math.ceil(steps / per_epoch))
    keys = jax.random.split(key, epochs)
    return jax.vmap(lambda k: jax.random.permutation(k, num_examples))(keys).astype(jnp.int32)


def batch_at(step: jax.Array, data: Data, batch_size: int,
             local_indices: Callable[[jax.Array], jax.Array] | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """The minibatch of training step ``step``: its slice of that epoch's permutation.

    Args:
      step: the (traced) step index.
      data: the device-resident :class:`Data`.
      batch_size: B.
      local_indices: data parallelism (:mod:`fgrad.train.parallel`): maps the step's B example
        indices to the part this device evaluates; None: all of them.

    Returns:
      ``(images, labels)`` of the step.
    """
    per_epoch = data.perms.shape[1] // batch_size
    epoch, pos = step // per_epoch, (step % per_epoch) * batch_size
    idx = jax.lax.dynamic_slice(data.perms[epoch], (pos,), (batch_size,))
    if local_indices is not None:
        idx = local_indices(idx)
    return data.images[idx], data.labels[idx]


def objective(loss: jax.Array) -> jax.Array:
    """The scalar a step minimises: the loss, or the sum of a vector of per-block losses (local
    losses, :func:`fgrad._models.training_loss`)."""
    return loss if jnp.ndim(loss) == 0 else jnp.sum(loss)


def make_train_step(loss_fn: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
                    tx: optax.GradientTransformationExtraArgs, batch_size: int,
                    local_indices: Callable[[jax.Array], jax.Array] | None = None) -> StepFn:
    """``train_step(state, data) -> (state, measurements)``: one update on the step's minibatch.

    Args:
      loss_fn: ``loss(params, images, labels)``, the mean loss of a batch (or a vector of
        per-block losses, whose sum is minimised: local losses).
      tx: an optax chain whose first element is a gradient source taking ``value_fn``.
      batch_size: B.
      local_indices: see :func:`batch_at` (data parallelism).

    Returns:
      The step; its measurements are ``{"loss": f(θ) on the step's batch}``, and
      ``grad_norm`` (the gradient estimate's global norm before clipping) when ``tx`` clips.
    """

    def train_step(state: TrainState, data: Data) -> tuple[TrainState, Measurements]:
        images, labels = batch_at(state.step, data, batch_size, local_indices)
        value_fn = lambda p: objective(loss_fn(p, images, labels))
        # loss_fn and batch too: sources that need per-example losses (activity perturbation)
        updates, opt_state = tx.update(state.params, state.opt_state, state.params,
                                       value_fn=value_fn, loss_fn=loss_fn,
                                       batch=(images, labels))
        params = optax.apply_updates(state.params, updates)
        measurements = {"loss": source_value(opt_state)}
        norm = optax.tree_utils.tree_get(opt_state, "grad_norm")
        if norm is not None:  # a clipped chain: the estimate's norm before clipping
            measurements["grad_norm"] = norm
        return TrainState(params, opt_state, state.step + 1), measurements

    return train_step


def make_multi_step(train_step: StepFn, num_steps: int) -> StepFn:
    """``num_steps`` train steps in one call, the measurements stacked to shape (num_steps,):
    a ``lax.scan``, or the plain step when ``num_steps`` is 1."""
    if num_steps > 1:
        return lambda state, data: jax.lax.scan(lambda s, _: train_step(s, data), state,
                                                length=num_steps)

    def one_step(state: TrainState, data: Data) -> tuple[TrainState, Measurements]:
        state, m = train_step(state, data)
        return state, jax.tree.map(lambda x: x[None], m)

    return one_step


def make_diagnostics_fn(loss_fn: Callable, source: optax.GradientTransformationExtraArgs,
                        batch_size: int) -> Callable[[TrainState, Data], dict[str, jax.Array]]:
    """``diag(state, data)``: quality of the gradient estimate the next step will use.

    ``source`` is the run's gradient source (a forward-gradient one built with
    ``diagnostics=True``, or activity perturbation); applied to the run's own source state (same
    key, same batch) it reproduces the next step's estimate, which is compared with the exact
    minibatch gradient (backprop, for the diagnostic only; the training step itself never
    computes it): cosine similarity, norm ratio ‖g‖/‖∇f‖, and for forward gradients the first
    directional derivative ∇f·v.
    """

    def diag(state: TrainState, data: Data) -> dict[str, jax.Array]:
        images, labels = batch_at(state.step, data, batch_size)
        value_fn = lambda p: objective(loss_fn(p, images, labels))
        # the run's next tangents: its source's key, read by field name from the chain's state
        src_state = source.init(state.params)._replace(
            key=optax.tree_utils.tree_get(state.opt_state, "key"))
        estimate, src = source.update(state.params, src_state, state.params, value_fn=value_fn,
                                      loss_fn=loss_fn, batch=(images, labels))
        if hasattr(src, "diagnostics"):  # forward gradient: computed by the source itself
            return {**src.diagnostics, "directional_derivative": src.directional_derivatives[0]}
        return gradient_diagnostics(estimate, jax.grad(value_fn)(state.params))

    return diag


def make_eval_fn(model: nn.Module, batch_size: int = 1000
                 ) -> Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """``eval_fn(params, images, labels) -> (mean loss, accuracy)`` over a whole split,
    in batches of ``batch_size`` (the split's size must be a multiple of it)."""
    loss_fn, acc_fn = cross_entropy_loss(model), accuracy(model)

    def eval_fn(params: PyTree, images: jax.Array, labels: jax.Array):
        n = images.shape[0]
        if n % batch_size:
            raise ValueError(f"evaluation split of {n} examples is not a multiple of "
                             f"{batch_size}")
        xb = images.reshape(n // batch_size, batch_size, *images.shape[1:])
        yb = labels.reshape(n // batch_size, batch_size)
        losses, accs = jax.lax.map(lambda b: (loss_fn(params, *b), acc_fn(params, *b)),
                                   (xb, yb))
        return jnp.mean(losses), jnp.mean(accs)

    return eval_fn
