"""Activity-perturbed forward gradients (Ren, Kornblith, Liao and Hinton, ICLR 2023).

Weight perturbation (:func:`fgrad.forward_gradient`) perturbs all n parameters, so its variance
grows with n. Activity perturbation perturbs the pre-activations instead. For a layer l with
z_l = x_l W_l + b_l (``nn.Dense``) or z_l = conv(x_l, W_l) + b_l (``nn.Conv``), each example i
gets its own noise u_{l,i} shaped like z_{l,i}, i.i.d. with zero mean and unit variance (normal
or Rademacher). One ``jax.jvp`` of the vector of per-example losses L_i, along all layers' u at
once, gives every example's directional derivative

    d_i = Σ_l ∇_{z_l} L_i · u_{l,i},

and E[d_i u_{l,i}] = ∇_{z_l} L_i (the u of other layers and examples are independent of u_{l,i}).
With δ_{l,i} = d_i u_{l,i} / B, the estimates of the gradient of the mean loss f = (1/B) Σ_i L_i

    ĝ_{W_l} = Σ_i x_{l,i}ᵀ δ_{l,i}   (conv: the weight-gradient of conv with output cotangent δ_l)
    ĝ_{b_l} = Σ_i δ_{l,i}            (conv: summed over positions too)

are unbiased. ĝ_W is a local product per layer (``jax.vjp`` of the layer's own linear op in W
alone, at the recorded input x_l), not a backward pass through the network. K perturbations:
δ_l = (1/(KB)) Σ_k d_{k,i} u_{k,l,i}, still one local product per layer.

Variance (one Dense layer, one perturbation; G_i = the concatenation over every perturbed layer
of ∇_{z_l} L_i, Ĝ_i its entries for this layer; d_i = G_i·u_i with u_i of all layers). By Isserlis
E[(G·u)² u_j²] = ‖G‖² + 2G_j² for normal u and ‖G‖² for Rademacher (E u⁴ = 1), and the examples
are independent, so per entry

    Var[ĝ_{b,j}]  = (1/B²) Σ_i (‖G_i‖² ± Ĝ_{ij}²) / K
    Var[ĝ_{W,aj}] = (1/B²) Σ_i x_{ia}² (‖G_i‖² ± Ĝ_{ij}²) / K

(+ normal, − Rademacher). In a ReLU net ∇_{z}L_i = 0 wherever z ≤ 0, so a layer followed by a
ReLU loses nothing if its u is zeroed there (``mask_relu``): d_i is unchanged and the estimate is
still unbiased, with Var multiplied by the mask 1[z_{ij} > 0]. Mask rule: every intercepted
layer call except the output layers (the last call, and the last call of each local head) is
assumed to be followed by a ReLU — true of every hidden Dense/Conv of fgrad's MLP and CNN. For
another architecture use ``mask_relu=False`` (always unbiased).

Local losses (:mod:`fgrad._local`): ``loss_fn`` returns the vector of per-block losses
(``fgrad.training_loss(model)``), the jvp gives d_{b,i} per block, and the layers of block b
use their own block's d_{b,i} (no other block's noise reaches L_b through the stop gradients),
so ĝ is an unbiased estimate of the gradient of Σ_b L_b with each block's local variance.

Interception. Per-example losses come from the batch-mean loss ``loss_fn(params, *batch)``
evaluated on batches of one example, ``jax.vmap``-ed over the batch (so XLA still sees batched
matmuls; a mean loss of one example is that example's loss; examples must not interact, e.g.
no batch norm). Inside, a ``flax.linen.intercept_methods`` interceptor finds each ``nn.Dense`` /
``nn.Conv`` ``__call__`` whose ``module.path + ("kernel",)`` is a params leaf (and whose kernel
is that very leaf), records its input x_l and output z_l, and adds the noise in the tangent only
(a ``jax.custom_jvp`` whose primal is z_l unchanged). Params are closed over as constants, so
the jvp carries tangents through activations only. Every params leaf must be such a kernel or
bias (else a one-line ValueError).

Example:
  >>> loss = cross_entropy_loss(model)                    # loss(params, images, labels)
  >>> out = activity_gradient(loss, params, (images, labels), jax.random.key(0))
  >>> out.grad["Dense_0"]["kernel"].shape
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fgrad._estimator import device_mean
from fgrad._local import LocalHead
from fgrad._tangents import check_distribution, check_float_leaves, sample_tangents
from fgrad._types import PyTree

_LAYERS = (nn.Dense, nn.Conv)


class ActivityGradient(NamedTuple):
    """What :func:`activity_gradient` returns.

    Attributes:
      value: f(θ) = (1/B) Σ_i L_i, a float32 scalar.
      directional_derivatives: d_{k,i}, shape (K, B).
      grad: the estimate ĝ, a pytree like θ.
    """

    value: jax.Array
    directional_derivatives: jax.Array
    grad: PyTree


class _Call(NamedTuple):
    """One perturbed layer call (static): its path, leaf indices, linear op, output shape, its
    block (local losses: the number of :class:`~fgrad._local.LocalHead` calls before it ended)
    and whether a ReLU follows it (every call but the output layers: the model's last call and
    each head's last)."""

    path: tuple[str, ...]
    kernel: int
    bias: int | None
    op: nn.Module
    out: jax.ShapeDtypeStruct
    block: int = 0
    relu: bool = True


def check_activity_options(num_perturbations: int, distribution: str, mask_relu: bool) -> int:
    """Returns K as an int, or raises a one-line ValueError naming the bad option.

    Args:
      num_perturbations: K ≥ 1, any integer type but bool.
      distribution: ``"normal"`` or ``"rademacher"``.
      mask_relu: a bool.
    """
    k = num_perturbations
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"num_perturbations must be an integer >= 1, got {k!r}: pass "
                         "num_perturbations=1 or more")
    check_distribution(distribution)
    if not isinstance(mask_relu, (bool, np.bool_)):
        raise ValueError(f"mask_relu must be True or False, got {mask_relu!r}: pass "
                         "mask_relu=True (ReLU nets) or mask_relu=False")
    return int(k)


def _path_names(key_path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                 for k in key_path)


def _match(context: Any, leaves: Sequence[Any], index: dict[tuple[str, ...], int]
           ) -> tuple[int, int | None] | None:
    """(kernel leaf, bias leaf or None) if this method call is a perturbed layer, else None."""
    module = context.module
    if context.method_name != "__call__" or type(module) not in _LAYERS:
        return None
    k = index.get((*module.path, "kernel"))
    if k is None or module.get_variable("params", "kernel") is not leaves[k]:
        return None
    b = index.get((*module.path, "bias")) if module.use_bias else None
    return k, b


def _example_fn(loss_fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """L_i(θ) = loss_fn(θ, *example as a batch of one), checked to be a real scalar or, with
    local losses, a vector of per-block losses."""
    def fn(params, example):
        out = jnp.asarray(loss_fn(params, *[a[None] for a in example]))
        if out.ndim > 1 or not jnp.issubdtype(out.dtype, jnp.floating):
            raise TypeError(f"loss_fn must return a real scalar (the batch-mean loss) or a "
                            f"vector of per-block losses, got shape {out.shape} and dtype "
                            f"{out.dtype}")
        return out.astype(jnp.promote_types(out.dtype, jnp.float32))
    return fn


def _find_calls(loss_fn: Callable[..., jax.Array], params: PyTree, batch: Sequence[jax.Array]
                ) -> list[_Call]:
    """The perturbed layer calls of one example's loss, in call order (an abstract trace)."""
    leaves, treedef = jax.tree.flatten(params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    index = {_path_names(p): i for i, (p, _) in enumerate(flat)}
    calls: list[_Call] = []
    heads: list[int] = []  # per head: the index of its last layer call

    def probe(leaves, example):
        def record(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if type(context.module) is LocalHead and context.method_name == "__call__":
                heads.append(len(calls) - 1)
            hit = _match(context, leaves, index)
            if hit is not None:
                op = context.module.clone(parent=None, use_bias=False)
                calls.append(_Call(tuple(context.module.path), *hit, op,
                                   jax.ShapeDtypeStruct(jnp.shape(y), jnp.result_type(y)),
                                   block=len(heads)))
            return y

        with nn.intercept_methods(record):
            return _example_fn(loss_fn)(jax.tree.unflatten(treedef, leaves), example)

    out = jax.eval_shape(probe, leaves, [a[0] for a in batch])
    if (out.shape[0] if out.ndim else 1) != len(heads) + 1:
        raise ValueError(f"loss_fn applies {len(heads)} local head(s) but returns "
                         f"{'a scalar' if not out.ndim else f'{out.shape[0]} losses'}: for "
                         f"local losses pass fgrad.training_loss(model) ({len(heads) + 1} "
                         "per-block losses)")
    outputs = {len(calls) - 1, *heads}
    calls[:] = [c._replace(relu=j not in outputs) for j, c in enumerate(calls)]
    covered = {i for c in calls for i in (c.kernel, c.bias) if i is not None}
    missing = ["/".join(_path_names(p)) for i, (p, _) in enumerate(flat) if i not in covered]
    if missing:
        raise ValueError(f"activity perturbation estimates only kernels and biases of the "
                         f"nn.Dense/nn.Conv layers loss_fn applies; not {', '.join(missing)}: "
                         "use forward_gradient for such models")
    return calls


def activity_layers(loss_fn: Callable[..., jax.Array], params: PyTree,
                    batch: Sequence[jax.Array], mask_relu: bool = True) -> list[tuple[str, bool]]:
    """The perturbed layer calls in call order, each with whether its noise is ReLU-masked.

    Args:
      loss_fn: ``loss_fn(params, *batch)``, the batch-mean loss (applies flax models).
      params: its parameters.
      batch: arrays with a leading batch axis (e.g. ``(images, labels)``).
      mask_relu: the option of :func:`activity_gradient`.

    Returns:
      ``[("Dense_0", True), ("Dense_1", True), ("Dense_2", False)]`` for fgrad's MLP.
    """
    calls = _find_calls(loss_fn, params, batch)
    return [("/".join(c.path), m) for c, m in zip(calls, _masks(calls, mask_relu))]


def _masks(calls: Sequence[_Call], mask_relu: bool) -> list[bool]:
    return [bool(mask_relu) and c.relu for c in calls]


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _perturb(y: jax.Array, eps: jax.Array, mask: bool) -> jax.Array:
    """y, with tangent ẏ + ε̇ (ε̇ zeroed where y ≤ 0 when ``mask``)."""
    del eps
    return y


@_perturb.defjvp
def _perturb_jvp(mask, primals, tangents):
    y, _ = primals
    dy, de = tangents
    de = jnp.where(y > 0, de, jnp.zeros_like(de)) if mask else de
    return y, dy + de.astype(dy.dtype)


def _perturbed_jvp(loss_fn, params, batch, calls, masks, u):
    """(L (B,), d (K, B), [(x_l, z_l) per call] each (B, ...)): one jvp of the per-example
    losses along every call's noise u_l (K, B, *z shape)."""
    leaves = jax.tree.leaves(params)
    index = {_path_names(p): i for i, (p, _) in
             enumerate(jax.tree_util.tree_flatten_with_path(params)[0])}
    example_fn = _example_fn(loss_fn)

    def per_example(example, u_i):
        def h(eps):
            seen: list[tuple[jax.Array, jax.Array]] = []

            def intercept(next_fun, args, kwargs, context):
                if _match(context, leaves, index) is None:
                    return next_fun(*args, **kwargs)
                j = len(seen)
                if j >= len(calls) or tuple(context.module.path) != calls[j].path:
                    raise ValueError("loss_fn called its layers in a different order than "
                                     "when traced: activity perturbation needs a fixed order")
                x = args[0] if args else kwargs["inputs"]
                y = next_fun(*args, **kwargs)
                seen.append((x, y))
                return _perturb(y, eps[j], masks[j])

            with nn.intercept_methods(intercept):
                loss = example_fn(params, example)
            return loss, seen

        zeros = [jnp.zeros(c.out.shape, c.out.dtype) for c in calls]
        return jax.jvp(h, (zeros,), (u_i,), has_aux=True)

    def one_perturbation(u_k):  # u_k: per call (B, *shape)
        return jax.vmap(per_example)(list(batch), u_k)

    if u[0].shape[0] == 1:
        loss, d, seen = one_perturbation([v[0] for v in u])
        return loss, d[None], seen
    return jax.vmap(one_perturbation, out_axes=(None, 0, None))(u)


def _local_products(params, calls, masks, seen, u, d):
    """ĝ: per call δ_l = (1/(KB)) Σ_k d_k m_l u_{k,l}, then ĝ_W by the vjp of the layer's op in W
    at x_l and ĝ_b = Σ δ_l; calls sharing a kernel add up."""
    leaves, treedef = jax.tree.flatten(params)
    grads: list[Any] = [None] * len(leaves)
    k, b = d.shape[:2]
    for c, m, (x, y), u_c in zip(calls, masks, seen, u):
        d_c = d[..., c.block] if d.ndim == 3 else d  # local losses: the block's own d
        delta = jnp.einsum("kb,kb...->b...", d_c.astype(u_c.dtype), u_c) / (k * b)
        if m:
            delta = jnp.where(y > 0, delta, jnp.zeros_like(delta))
        x = x.reshape(-1, *x.shape[2:])  # (B, 1, ...) → (B, ...)
        delta = delta.reshape(-1, *delta.shape[2:])
        w = leaves[c.kernel]
        _, vjp = jax.vjp(lambda w, x=x, c=c: c.op.apply({"params": {"kernel": w}}, x), w)
        parts = [(c.kernel, vjp(delta.astype(c.out.dtype))[0])]
        if c.bias is not None:
            parts.append((c.bias, delta.sum(axis=tuple(range(delta.ndim - 1)))))
        for i, g in parts:
            g = g.astype(leaves[i].dtype).reshape(jnp.shape(leaves[i]))
            grads[i] = g if grads[i] is None else grads[i] + g
    return jax.tree.unflatten(treedef, grads)


def activity_gradient(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    batch: Sequence[jax.Array],
    key: jax.Array,
    *,
    num_perturbations: int = 1,
    distribution: str = "normal",
    mask_relu: bool = True,
    axis_name: str | None = None,
) -> ActivityGradient:
    """Activity-perturbed forward-gradient estimate of ∇f(θ), f = ``loss_fn(θ, *batch)``.

    ĝ_{W_l} = Σ_i x_{l,i}ᵀ δ_{l,i}, ĝ_{b_l} = Σ_i δ_{l,i} with δ_{l,i} = (1/(KB)) Σ_k d_{k,i}
    u_{k,l,i} and d_{k,i} = Σ_l ∇_{z_l}L_i · u_{k,l,i} from one jvp (see the module docstring);
    E[ĝ] = ∇f.

    Args:
      loss_fn: ``loss_fn(params, *batch)`` → the batch-mean loss, a real scalar; a mean over
        independent per-example terms (it is evaluated on batches of one, vmapped).
      params: θ; every leaf must be the kernel or bias of an ``nn.Dense``/``nn.Conv`` that
        ``loss_fn`` applies.
      batch: a sequence of arrays with a common leading batch axis B (e.g. images, labels).
      key: PRNG key of the noise.
      num_perturbations: K ≥ 1 noise draws per example, averaged (variance / K).
      distribution: ``"normal"`` or ``"rademacher"``.
      mask_relu: zero the noise where z ≤ 0 for every perturbed layer call but the last (those
        assumed followed by a ReLU; see the module docstring). Unbiased either way for fgrad's
        MLP and CNN; masking only lowers the variance.
      axis_name: under ``jax.shard_map``, the data-parallel mesh axis: each device draws its own
        noise (the key folded with its index) for its shard, and f and ĝ are averaged over the
        axis (an all-reduce of ĝ: n numbers, unlike weight perturbation's K + 1). None: none.

    Returns:
      An :class:`ActivityGradient` (``value``, ``directional_derivatives`` (K, B), ``grad``).

    Example:
      >>> loss = cross_entropy_loss(make_model("mlp", width=16))
      >>> out = activity_gradient(loss, params, (images, labels), jax.random.key(0),
      ...                         num_perturbations=4)
    """
    k = check_activity_options(num_perturbations, distribution, mask_relu)
    check_float_leaves(params)
    batch = [jnp.asarray(a) for a in batch]
    if not batch or len({a.shape[0] if a.ndim else None for a in batch}) != 1 or (
            batch[0].ndim == 0):
        raise ValueError(f"batch must be arrays with one common leading batch axis, got shapes "
                         f"{[tuple(a.shape) for a in batch]}")
    if axis_name is not None:
        # device-varying params: under shard_map the local products' vjp in a replicated W
        # would otherwise sum the devices' estimates itself (then device_mean again: D× ĝ)
        params = jax.lax.pcast(params, axis_name, to="varying")
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    calls = _find_calls(loss_fn, params, batch)
    masks = _masks(calls, mask_relu)
    size = batch[0].shape[0]
    u = sample_tangents(key, [jax.ShapeDtypeStruct((size, *c.out.shape), c.out.dtype)
                              for c in calls], k, distribution)
    losses, d, seen = _perturbed_jvp(loss_fn, params, batch, calls, masks, u)
    grad = _local_products(params, calls, masks, seen, u, d)
    value = jnp.sum(jnp.mean(losses, axis=0)).astype(jnp.float32)  # Σ over blocks, if any
    value, grad = device_mean((value, grad), axis_name)
    d = d.sum(axis=-1) if d.ndim == 3 else d  # the objective's directional derivative
    return ActivityGradient(value, d.astype(jnp.float32), grad)
