"""Gradient sources as optax transformations.

A gradient source ignores the incoming ``updates`` and produces a gradient of the scalar
``value_fn(params)`` passed as an extra argument (optax's ``GradientTransformationExtraArgs``
convention). Forward-gradient and backprop training then differ in one component only::

    tx = optax.chain(forward_gradient_source(seed=0), optax.sgd(paper_schedule(2e-4)))
    updates, state = tx.update(params, state, params, value_fn=loss_of_params)

The source's state keeps the last ``value`` (and, for forward gradients, the PRNG key and the
directional derivatives) so a training step can log them without recomputing anything.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fgrad._activity import activity_gradient, check_activity_options
from fgrad._estimator import check_estimator_options, forward_gradient, mean_value_and_grad
from fgrad._tangents import sample_tangents
from fgrad._types import PyTree


class ForwardGradientState(NamedTuple):
    """State of :func:`forward_gradient_source`.

    Attributes:
      key: the PRNG key the next step's tangents are drawn from.
      value: f(θ) at the last update (float32).
      directional_derivatives: the last step's K values ∇f·v_k.
      diagnostics: when enabled, ``cosine`` (between the estimate and the exact gradient) and
        ``norm_ratio`` (‖estimate‖ / ‖exact‖) of the last step; else an empty dict.
    """

    key: jax.Array
    value: jax.Array
    directional_derivatives: jax.Array
    diagnostics: dict[str, jax.Array]


class ActivityPerturbationState(NamedTuple):
    """State of :func:`activity_perturbation_source`: the noise's PRNG ``key`` and ``value`` =
    f(θ) at the last update (float32)."""

    key: jax.Array
    value: jax.Array


class BackpropState(NamedTuple):
    """State of :func:`backprop_source`: ``value`` is f(θ) at the last update."""

    value: jax.Array


class NoisyBackpropState(NamedTuple):
    """State of :func:`noisy_backprop_source`: the noise's PRNG ``key`` and ``value`` = f(θ) at
    the last update."""

    key: jax.Array
    value: jax.Array


def _check_seed(seed: int | jax.Array) -> None:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(
            seed, (numbers.Integral, jax.Array, np.ndarray)):
        raise TypeError(f"seed must be an integer or a PRNG key (jax.random.key), got {seed!r}")


def _need_params(params: PyTree | None, source: str) -> None:
    if params is None:
        raise ValueError(f"{source} needs params: call update(u, s, params, value_fn=...)")


def _key(seed: int | jax.Array) -> jax.Array:
    return jax.random.key(int(seed)) if isinstance(seed, numbers.Integral) else seed


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    return sum(jnp.vdot(x, y).astype(jnp.float32) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def gradient_diagnostics(estimate: PyTree, exact: PyTree) -> dict[str, jax.Array]:
    """Cosine similarity and norm ratio of a gradient estimate against the exact gradient.

    cos = ⟨g, ∇f⟩ / (‖g‖ ‖∇f‖) and norm_ratio = ‖g‖ / ‖∇f‖ (for normal tangents and K = 1,
    E[cos²] ≈ 1/n and E[‖g‖²/‖∇f‖²] = n + 2 for n parameters).

    Args:
      estimate: the gradient estimate g.
      exact: the exact gradient ∇f, same structure.

    Returns:
      ``{"cosine": ..., "norm_ratio": ...}``, float32 scalars.

    Example:
      >>> gradient_diagnostics({"w": jnp.ones(2)}, {"w": jnp.ones(2)})["cosine"]  # 1.0
    """
    tiny = jnp.finfo(jnp.float32).tiny
    gg, ee, ge = _tree_vdot(estimate, estimate), _tree_vdot(exact, exact), _tree_vdot(estimate,
                                                                                    exact)
    return {"cosine": ge / jnp.sqrt(jnp.maximum(gg * ee, tiny)),
            "norm_ratio": jnp.sqrt(gg / jnp.maximum(ee, tiny))}


def forward_gradient_source(
    seed: int | jax.Array = 0,
    *,
    num_tangents: int = 1,
    distribution: str = "normal",
    combine: str = "mean",
    derivative: str = "jvp",
    fd_epsilon: float = 1e-3,
    diagnostics: bool = False,
    axis_name: str | None = None,
    tangents: str = "iid",
    rank: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """Replaces the updates by a forward gradient of ``value_fn`` at ``params``.

    Each update splits the key in the state, draws K tangents v_k and returns
    g = combine_k((∇f·v_k) v_k) (see :func:`fgrad.forward_gradient`); no reverse pass is traced
    unless ``diagnostics=True``.

    Args:
      seed: an integer seed (any integer type, e.g. ``int`` or ``np.int64``; not bool) or a PRNG
        key for the tangents.
      num_tangents: K ≥ 1, any integer type.
      distribution: ``"normal"`` or ``"rademacher"``.
      combine: ``"mean"`` or ``"projection"``.
      derivative: ``"jvp"`` (exact, forward mode) or ``"forward_difference"`` /
        ``"central_difference"`` (zeroth-order baselines).
      fd_epsilon: ε for finite differences.
      diagnostics: also compute the exact gradient by backprop, only to record the cosine
        similarity and norm ratio in the state (costs a backward pass).
      axis_name: data parallelism under ``jax.shard_map``: the mesh axis the batch is split on.
        The K directional derivatives and f(θ) are averaged over it (``lax.pmean``, K + 1
        scalars per step) before g is formed; the state (hence the key and the tangents) must
        be replicated. None: single device.
      tangents: ``"iid"`` or ``"low_rank"`` (V = ABᵀ/√r for the kernel of every flax
        ``nn.Dense``/``nn.Conv`` that ``value_fn`` applies; the jvp never forms V).
      rank: r ≥ 1 of low-rank tangents.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes ``value_fn``.

    Example:
      >>> tx = optax.chain(forward_gradient_source(0), optax.sgd(1e-2))
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params, value_fn=rosenbrock)
      >>> # low-rank tangents for a flax model's kernels:
      >>> tx = optax.chain(forward_gradient_source(0, tangents="low_rank", rank=1),
      ...                  optax.sgd(2e-4))
      >>> value_fn = lambda p: cross_entropy_loss(model)(p, images, labels)
    """
    check_estimator_options(num_tangents, distribution, combine, derivative, fd_epsilon,
                            tangents, rank)
    num_tangents = int(num_tangents)
    _check_seed(seed)

    def init_fn(params):
        key = _key(seed)
        del params
        diag = ({"cosine": jnp.zeros((), jnp.float32), "norm_ratio": jnp.zeros((), jnp.float32)}
                if diagnostics else {})
        return ForwardGradientState(key, jnp.zeros((), jnp.float32),
                                    jnp.zeros((num_tangents,), jnp.float32), diag)

    def update_fn(updates, state, params=None, *, value_fn: Callable[[PyTree], jax.Array],
                  **extra_args):
        del updates, extra_args
        _need_params(params, "forward_gradient_source")
        key, subkey = jax.random.split(state.key)
        out = forward_gradient(value_fn, params, subkey, num_tangents=num_tangents,
                               distribution=distribution, combine=combine,
                               derivative=derivative, fd_epsilon=fd_epsilon,
                               return_exact=diagnostics, axis_name=axis_name,
                               tangents=tangents, rank=rank)
        diag = gradient_diagnostics(out.grad, out.exact_grad) if diagnostics else {}
        new_state = ForwardGradientState(key, out.value.astype(jnp.float32),
                                         out.directional_derivatives.astype(jnp.float32), diag)
        return out.grad, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def backprop_source(axis_name: str | None = None) -> optax.GradientTransformationExtraArgs:
    """Replaces the updates by the exact gradient ∇f(θ) of ``value_fn`` (reverse mode).

    The baseline of the paper: ``jax.value_and_grad(value_fn)(params)``.

    Args:
      axis_name: data parallelism under ``jax.shard_map``: the mesh axis the batch is split on;
        each device's gradient and f(θ) are averaged over it (``lax.pmean``, an all-reduce of
        all n gradient entries per step). None: single device.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes ``value_fn``.

    Example:
      >>> tx = optax.chain(backprop_source(), optax.sgd(1e-2))
      >>> state = tx.init(jnp.zeros(2))
      >>> updates, state = tx.update(jnp.zeros(2), state, jnp.zeros(2), value_fn=rosenbrock)
    """

    def init_fn(params):
        del params
        return BackpropState(jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None, *, value_fn: Callable[[PyTree], jax.Array],
                  **extra_args):
        del updates, extra_args
        _need_params(params, "backprop_source")
        value, grad = mean_value_and_grad(value_fn, params, axis_name)
        return grad, BackpropState(value.astype(jnp.float32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def noisy_backprop_source(seed: int | jax.Array = 0, *, axis_name: str | None = None
                          ) -> optax.GradientTransformationExtraArgs:
    """The exact gradient plus independent Gaussian noise with the forward gradient's covariance.

    A control for forward gradient descent: for normal tangents and K = 1 the forward gradient
    g = (∇f·v) v has E[g] = ∇f and Cov[g] = E[(∇f·v)² v vᵀ] − ∇f∇fᵀ = ‖∇f‖² I + ∇f∇fᵀ. This
    source returns

        g̃ = ∇f + ‖∇f‖ z + s ∇f,   z ~ N(0, I_n), s ~ N(0, 1) independent,

    whose mean and covariance are exactly those (Cov = ‖∇f‖² I + ∇f∇fᵀ), but whose noise is
    independent of the direction the estimate is built from. Training with it at the forward
    gradient's learning rate separates what the forward gradient's *noise level* does from what
    its *structure* (a rank-one estimate along a random direction) does. It needs ∇f, so it runs
    a backward pass: a scientific control, not a training method.

    Args:
      seed: an int seed or a PRNG key for the noise.
      axis_name: data parallelism under ``jax.shard_map`` (as :func:`backprop_source`); the
        noise comes from the replicated key, so it is the same on every device.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes ``value_fn``.

    Example:
      >>> tx = optax.chain(noisy_backprop_source(0), optax.sgd(1e-3))
      >>> state = tx.init(jnp.zeros(2))
      >>> updates, state = tx.update(jnp.zeros(2), state, jnp.zeros(2), value_fn=rosenbrock)
    """
    _check_seed(seed)

    def init_fn(params):
        del params
        return NoisyBackpropState(_key(seed), jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None, *, value_fn: Callable[[PyTree], jax.Array],
                  **extra_args):
        del updates, extra_args
        _need_params(params, "noisy_backprop_source")
        value, grad = mean_value_and_grad(value_fn, params, axis_name)
        key, k_z, k_s = jax.random.split(state.key, 3)
        z = jax.tree.map(lambda v: v[0], sample_tangents(k_z, grad, 1, "normal"))
        s = jax.random.normal(k_s, (), jnp.float32)
        norm = jnp.sqrt(_tree_vdot(grad, grad))
        noisy = jax.tree.map(lambda g, e: g + (norm * e + s * g).astype(g.dtype), grad, z)
        return noisy, NoisyBackpropState(key, value.astype(jnp.float32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def activity_perturbation_source(
    seed: int | jax.Array = 0,
    *,
    num_perturbations: int = 1,
    distribution: str = "normal",
    mask_relu: bool = True,
    axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Replaces the updates by an activity-perturbed forward gradient (Ren et al. 2023).

    Per example i and perturbed layer l the noise u_{l,i} is added to the pre-activation z_l in
    the tangent of one jvp of the per-example losses, giving d_i = Σ_l ∇_{z_l}L_i·u_{l,i}; then
    ĝ_W = (1/B) Σ_i x_{l,i}ᵀ d_i u_{l,i} and ĝ_b = (1/B) Σ_i d_i u_{l,i} (local products, no
    backward pass; unbiased; see :func:`fgrad.activity_gradient` and :mod:`fgrad._activity`).

    Calling convention: it needs per-example losses, which a scalar ``value_fn`` cannot give, so
    ``update`` takes the extra arguments ``loss_fn`` (``loss_fn(params, *batch)`` → the
    batch-mean loss) and ``batch`` (arrays with a leading batch axis), as
    :func:`fgrad.train.step.make_train_step` passes them; ``value_fn``, if given, is ignored.

    Args:
      seed: an integer seed or a PRNG key for the noise.
      num_perturbations: K ≥ 1 noise draws per example, averaged.
      distribution: ``"normal"`` or ``"rademacher"``.
      mask_relu: zero the noise where the layer's ReLU is inactive (every perturbed layer call
        but the last; right for fgrad's MLP and CNN).
      axis_name: data parallelism under ``jax.shard_map``: per-device noise, f and ĝ averaged
        over the axis (an all-reduce of n numbers). None: single device.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes ``loss_fn`` and
      ``batch``.

    Example:
      >>> tx = optax.chain(activity_perturbation_source(0), optax.sgd(1e-2))
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params, loss_fn=cross_entropy_loss(model),
      ...                            batch=(images, labels))
    """
    num_perturbations = check_activity_options(num_perturbations, distribution, mask_relu)
    _check_seed(seed)

    def init_fn(params):
        del params
        return ActivityPerturbationState(_key(seed), jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None, *, loss_fn: Callable[..., jax.Array] | None = None,
                  batch: tuple[jax.Array, ...] | None = None, **extra_args):
        del updates, extra_args
        _need_params(params, "activity_perturbation_source")
        if loss_fn is None or batch is None:
            raise ValueError("activity_perturbation_source needs per-example losses: call "
                             "update(u, s, params, loss_fn=loss, batch=(images, labels))")
        key, subkey = jax.random.split(state.key)
        out = activity_gradient(loss_fn, params, batch, subkey,
                                num_perturbations=num_perturbations, distribution=distribution,
                                mask_relu=mask_relu, axis_name=axis_name)
        return out.grad, ActivityPerturbationState(key, out.value)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# The gradient sources by method name: the one list of methods (configs, CLI, report).
SOURCES: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "forward": forward_gradient_source,
    "backprop": backprop_source,
    "backprop_noise": noisy_backprop_source,
    "activity": activity_perturbation_source,
}
