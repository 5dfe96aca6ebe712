"""Low-rank tangents: forward gradients whose tangent product costs two thin matmuls.

For a weight matrix W (m × n) the tangent is V = A Bᵀ/√r with A (m × r) and B (n × r) of
i.i.d. zero-mean, unit-variance entries (normal or Rademacher). Then

    E[V_ij V_kl] = (1/r) Σ_s E[A_is A_ks] E[B_js B_ls] = δ_ik δ_jl,

so E[vec V vec Vᵀ] = I and g = (∇f·V) V is still unbiased. A convolution kernel
(kh, kw, C_in, C_out) is factorised over (kh·kw·C_in) × C_out; other leaves stay i.i.d.

Mean squared error (one m × n leaf with gradient G, one tangent; K tangents divide it by K). Write
G·V = αᵀc/√r and ‖V‖² = αᵀMα/r with α = vec A, c_s = G b_s and M = BᵀB ⊗ I_m. Given B, Isserlis'
theorem (plus the fourth-cumulant term) gives E_α[(αᵀc)² αᵀMα] = ‖c‖² tr M + 2cᵀMc + (E[a⁴] − 3) Σ_i
c_i² M_ii. Averaging over normal B, E[‖c‖² tr M] = mr(nr + 2)‖G‖² and E[cᵀMc] = r(n + r + 1)‖G‖², so
E‖g‖² = (mn + 2 + 2(m + n + 1)/r)‖G‖²; for Rademacher factors (tr M = mnr and M_ii = n are constant)
E‖g‖² = (mn + 2 − 2/r)‖G‖². Subtracting ‖G‖²:

    normal factors:      E‖g − G‖² = (mn + 1 + 2(m + n + 1)/r) ‖G‖²
    Rademacher factors:  E‖g − G‖² = (mn + 1 − 2/r) ‖G‖²

against (mn + 1)‖G‖² (normal) and (mn − 1)‖G‖² (Rademacher) for i.i.d. tangents. Rank-1 normal gives
((m + 2)(n + 2) − 1)‖G‖², rank-1 Rademacher the i.i.d. value; r → ∞ tends to i.i.d. normal (V
becomes Gaussian). :func:`tangent_mse` returns these.

The jvp never forms V. A first, abstract trace of ``fun`` (``jax.eval_shape``) under
``flax.linen.intercept_methods`` records every ``nn.Dense`` and ``nn.Conv`` (no feature groups, no
mask) ``__call__`` whose ``module.path + ("kernel",)`` is a path of the params tree and whose kernel
is that very leaf. In the jvp, those kernels are closed over as constants (zero tangent: no m × n
tangent product); the jvp primals are the other (i.i.d.) leaves and one scalar t per layer (primal
0, tangent 1); an interceptor entered inside the function given to ``jax.jvp`` adds t·((x ⊛
A)·Bᵀ)/√r to each such layer's output, x ⊛ A being the layer's own operation
(``module.clone(features=r, use_bias=False)``) with the kernel-shaped A: (kh, kw, C_in, r) for a
convolution, giving r channels. The term is a ``jax.custom_jvp`` whose primal is the layer's output
unchanged, so the K tangents share one primal pass. Leaves of ndim ≥ 2 that no such layer uses fall
back to i.i.d. tangents (:func:`low_rank_layers` lists the factorised ones). A kernel's update is
one matmul over the K·r factor columns (:func:`combine_low_rank`).

Example:
  >>> tx = optax.chain(forward_gradient_source(0, tangents="low_rank", rank=1), optax.sgd(2e-4))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fgrad._tangents import check_distribution, check_num_tangents, sample_tangents
from fgrad._types import PyTree

TANGENTS = ("iid", "low_rank")
_HIGHEST = jax.lax.Precision.HIGHEST


def check_tangents(tangents: str, rank: int = 1) -> None:
    """Raises a one-line ValueError unless ``tangents`` is in :data:`TANGENTS` and ``rank`` is an
    integer ≥ 1 (any integer type, not bool)."""
    if not isinstance(tangents, str) or tangents not in TANGENTS:
        raise ValueError(f"unknown tangents {tangents!r}: use one of {', '.join(TANGENTS)}")
    if (isinstance(rank, (bool, np.bool_)) or not isinstance(rank, numbers.Integral)
            or rank < 1):
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}: pass rank=1 or more")


def tangent_mse(m: int, n: int, distribution: str = "normal", tangents: str = "iid",
                rank: int = 1) -> float:
    """E‖g − G‖²/‖G‖² of the one-tangent forward gradient of one m × n leaf (see the module).

    Args:
      m, n: the leaf's factorised shape (rows = all axes but the last).
      distribution: ``"normal"`` or ``"rademacher"``.
      tangents: ``"iid"`` or ``"low_rank"``.
      rank: r (low-rank only).

    Returns:
      The factor; divide by K for the mean of K tangents.

    Example:
      >>> tangent_mse(784, 1024, "normal", "low_rank", 1)  # 786·1026 − 1 = 806435.0
    """
    check_tangents(tangents, rank)
    normal = check_distribution(distribution) == "normal"
    if tangents == "iid":
        return float(m * n + (1 if normal else -1))
    return float(m * n + 1 + (2 * (m + n + 1) if normal else -2) / rank)


def _path_str(key_path: tuple) -> tuple[str, ...]:
    """A pytree key path as a tuple of names (dict keys, attribute names, indices)."""
    return tuple(str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)))
                 for k in key_path)


def _eligible(module: nn.Module) -> bool:
    """Whether the interceptor factorises this module's kernel."""
    return type(module) is nn.Dense or (type(module) is nn.Conv and module.mask is None
                                         and module.feature_group_count == 1)


def _find_layers(fun: Callable[[PyTree], jax.Array], params: PyTree
                 ) -> dict[tuple[str, ...], int]:
    """Module path → leaf index of each eligible layer whose kernel is that params leaf."""
    leaves, treedef = jax.tree.flatten(params)
    index = {_path_str(p): i for i, (p, _) in
             enumerate(jax.tree_util.tree_flatten_with_path(params)[0])}
    found: dict[tuple[str, ...], int] = {}

    def probe(leaves):
        def record(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name == "__call__" and _eligible(module):
                i = index.get((*module.path, "kernel"))
                if (i is not None and jnp.ndim(leaves[i]) >= 2
                        and module.get_variable("params", "kernel") is leaves[i]):
                    found[tuple(module.path)] = i
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            fun(jax.tree.unflatten(treedef, leaves))

    jax.eval_shape(probe, leaves)
    return found


def low_rank_layers(fun: Callable[[PyTree], jax.Array], params: PyTree
                    ) -> dict[str, tuple[int, int]]:
    """The leaves of ``params`` that low-rank tangents factorise, with their (m, n).

    Args:
      fun: the function of ``params`` that applies a flax model (as given to the estimator).
      params: its parameters.

    Returns:
      ``"Dense_0/kernel" → (m, n)`` for each factorised kernel (all axes but the last × the
      last); every other leaf gets i.i.d. tangents.

    Example:
      >>> low_rank_layers(lambda p: model.apply({"params": p}, x).sum(), params)
      {'Dense_0/kernel': (784, 1024), ...}
    """
    leaves = jax.tree.leaves(params)
    return {"/".join((*path, "kernel")): _matrix_shape(jnp.shape(leaves[i]))
            for path, i in _find_layers(fun, params).items()}


def _matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    return math.prod(shape[:-1]), shape[-1]


@flax.struct.dataclass
class LowRankTangents:
    """K tangents of a params pytree, factorised where a layer allows it.

    Attributes:
      iid: the i.i.d. tangents of the other leaves, (K, *shape) each, in leaf order.
      a: per factorised leaf, A of shape (K, m, r).
      b: per factorised leaf, B of shape (K, n, r).
      treedef, factorised, shapes, rank: static: the params' structure, the indices of the
        factorised leaves (in ``jax.tree.leaves`` order), every leaf's shape, r.
    """

    iid: list[jax.Array]
    a: list[jax.Array]
    b: list[jax.Array]
    treedef: jax.tree_util.PyTreeDef = flax.struct.field(pytree_node=False)
    factorised: tuple[int, ...] = flax.struct.field(pytree_node=False)
    shapes: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False)
    rank: int = flax.struct.field(pytree_node=False)

    def per_leaf(self, factor: Callable[..., jax.Array], iid: Callable[[jax.Array], jax.Array]
                 ) -> PyTree:
        """A pytree like params: ``factor(A, B, shape)`` at the factorised leaves, ``iid(v)`` at
        the others."""
        slot, rest = {i: j for j, i in enumerate(self.factorised)}, iter(self.iid)
        return jax.tree.unflatten(self.treedef, [
            factor(self.a[slot[i]], self.b[slot[i]], shape) if i in slot else iid(next(rest))
            for i, shape in enumerate(self.shapes)])

    def materialize(self) -> PyTree:
        """The tangents as a pytree like params with a leading K axis (V = ABᵀ/√r formed)."""
        return self.per_leaf(lambda a, b, shape: (jnp.einsum(
            "kmr,knr->kmn", a, b, precision=_HIGHEST) / math.sqrt(self.rank)).reshape(
                a.shape[0], *shape), lambda v: v)


def sample_low_rank_tangents(key: jax.Array, params: PyTree, num_tangents: int = 1,
                             distribution: str = "normal", rank: int = 1,
                             factorised: Sequence[int] | None = None) -> LowRankTangents:
    """Draws K low-rank tangents: factors A, B for the ``factorised`` leaves, i.i.d. the rest.

    Args:
      key: a PRNG key (split once: i.i.d. leaves and factors use independent streams).
      params: the floating-point pytree the tangents perturb (dtypes are kept).
      num_tangents: K ≥ 1.
      distribution: ``"normal"`` or ``"rademacher"`` (of the factors' and i.i.d. entries).
      rank: r ≥ 1.
      factorised: indices (``jax.tree.leaves`` order) of the leaves to factorise; None: every
        leaf with ndim ≥ 2.

    Returns:
      A :class:`LowRankTangents`.

    Example:
      >>> t = sample_low_rank_tangents(jax.random.key(0), {"w": jnp.zeros((3, 2))}, 4)
      >>> t.a[0].shape, t.b[0].shape
      ((4, 3, 1), (4, 2, 1))
    """
    check_tangents("low_rank", rank)
    num_tangents = check_num_tangents(num_tangents)
    leaves, treedef = jax.tree.flatten(params)
    if factorised is None:
        factorised = [i for i, x in enumerate(leaves) if jnp.ndim(x) >= 2]
    factorised = tuple(sorted(int(i) for i in factorised))
    k_iid, k_fac = jax.random.split(key)
    iid = sample_tangents(k_iid, [x for i, x in enumerate(leaves) if i not in factorised],
                          num_tangents, distribution)
    shapes = [tuple(jax.ShapeDtypeStruct((size, rank), jnp.result_type(leaves[i]))
                    for size in _matrix_shape(jnp.shape(leaves[i]))) for i in factorised]
    factors = sample_tangents(k_fac, shapes, num_tangents, distribution)
    return LowRankTangents(iid, [f[0] for f in factors], [f[1] for f in factors], treedef,
                           factorised, tuple(tuple(jnp.shape(x)) for x in leaves), int(rank))


def _add_tangent_term(module: nn.Module, kernel_shape: tuple[int, ...], rank: int,
                      y: jax.Array, t: jax.Array, x: jax.Array, a: jax.Array, b: jax.Array
                      ) -> jax.Array:
    """y, with tangent ẏ + ṫ·((x ⊛ A)·Bᵀ)/√r (the jvp of y + t·(x ⊛ A)Bᵀ/√r at t = 0)."""

    @jax.custom_jvp
    def add(y, t, x, a, b):
        del t, x, a, b
        return y

    @add.defjvp
    def add_jvp(primals, tangents):
        y, _, x, a, b = primals
        dy, dt = tangents[0], tangents[1]
        thin = module.clone(parent=None, features=rank, use_bias=False)
        xa = thin.apply({"params": {"kernel": a.reshape(*kernel_shape[:-1], rank)}}, x)
        u = jnp.matmul(xa, b.T.astype(xa.dtype), precision=module.precision)
        u = (u * (dt / math.sqrt(rank)).astype(u.dtype)).astype(dy.dtype)
        return y, dy + u

    return add(y, t, x, a, b)


def low_rank_jvp(fun: Callable[[PyTree], jax.Array], params: PyTree,
                 tangents: LowRankTangents, layers: dict[tuple[str, ...], int] | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """f(θ) and the K directional derivatives d_k = ∇f(θ)·v_k, factorised (see the module). A
    factorised leaf that no intercepted layer uses raises a ValueError (it would be missed).

    Args:
      fun: a scalar function of ``params`` applying flax models.
      params: the point θ.
      tangents: from :func:`sample_low_rank_tangents`.
      layers: module path → leaf index, as :func:`_find_layers` returns (None: traced here).

    Returns:
      ``(value, d)`` with d of shape (K,).
    """
    leaves = jax.tree.leaves(params)
    fac = tangents.factorised
    layers = _find_layers(fun, params) if layers is None else layers
    layers = {path: i for path, i in layers.items() if i in fac}
    missing = sorted(set(fac) - set(layers.values()))
    if missing:
        raise ValueError(f"leaves {missing} are factorised but no intercepted nn.Dense/nn.Conv "
                         "uses them as its kernel: draw them i.i.d. (factorised=...)")
    slot = {i: j for j, i in enumerate(fac)}
    iid_idx = [i for i in range(len(leaves)) if i not in slot]

    def directional(iid_v, a, b):
        def h(iid_leaves, ts):
            full = list(leaves)
            for i, x in zip(iid_idx, iid_leaves):
                full[i] = x
            busy = [False]  # the term's own thin layer is intercepted too: let it through

            def intercept(next_fun, args, kwargs, context):
                module = context.module
                i = layers.get(tuple(module.path)) if not busy[0] else None
                if i is None or context.method_name != "__call__" or not _eligible(module):
                    return next_fun(*args, **kwargs)
                if module.get_variable("params", "kernel") is not leaves[i]:
                    raise ValueError(f"{'/'.join(module.path)} reads a kernel other than "
                                     "params' leaf at its path: use tangents='iid'")
                y = next_fun(*args, **kwargs)
                x = args[0] if args else kwargs["inputs"]
                j, busy[0] = slot[i], True
                try:
                    return _add_tangent_term(module, tangents.shapes[i], tangents.rank, y,
                                             ts[j], x, a[j], b[j])
                finally:
                    busy[0] = False

            with nn.intercept_methods(intercept):
                return fun(jax.tree.unflatten(tangents.treedef, full))

        ts = [jnp.zeros((), jnp.float32) for _ in fac]
        iid_leaves = [leaves[i] for i in iid_idx]
        return jax.jvp(h, (iid_leaves, ts), (iid_v, [jnp.ones_like(t) for t in ts]))

    k = jax.tree.leaves((tangents.iid, tangents.a))[0].shape[0]
    if k == 1:  # no batch axis: plain matmuls
        first = jax.tree.map(lambda v: v[0], (tangents.iid, tangents.a, tangents.b))
        value, d = directional(*first)
        return value, d[None]
    values, d = jax.vmap(directional)(tangents.iid, tangents.a, tangents.b)
    return values[0], d


def _solve_dtype(tangents: LowRankTangents):
    wide = any(x.dtype == jnp.float64 for x in jax.tree.leaves(tangents))
    return jnp.float64 if wide else jnp.float32


def low_rank_gram(tangents: LowRankTangents) -> jax.Array:
    """G_kl = ⟨v_k, v_l⟩ over every leaf, the factorised ones from their factors:
    ⟨A_kB_kᵀ, A_lB_lᵀ⟩/r = tr((A_kᵀA_l)(B_lᵀB_k))/r, in float32 (float64 if a leaf is)."""
    dtype = _solve_dtype(tangents)
    k = jax.tree.leaves(tangents)[0].shape[0]
    gram = jnp.zeros((k, k), dtype)
    if tangents.iid:
        m = jnp.concatenate([v.reshape(k, -1).astype(dtype) for v in tangents.iid], axis=1)
        gram = gram + jnp.matmul(m, m.T, precision=_HIGHEST)
    for a, b in zip(tangents.a, tangents.b):
        a, b = a.astype(dtype), b.astype(dtype)
        p = jnp.einsum("kmr,lms->klrs", a, a, precision=_HIGHEST)
        q = jnp.einsum("knr,lns->klrs", b, b, precision=_HIGHEST)
        gram = gram + jnp.sum(p * q, axis=(2, 3)) / tangents.rank
    return gram


def combine_low_rank(tangents: LowRankTangents, d: jax.Array, combine: str = "mean") -> PyTree:
    """g = Σ_k c_k v_k from the directional derivatives d, like params.

    ``"mean"``: c = d/K. ``"projection"``: c = G⁺d with G the Gram matrix
    (:func:`low_rank_gram`) by eigendecomposition, dropping eigenvalues below K·eps·λ_max (G
    is formed, so directions below √(K·eps) of the largest are lost; K ≪ n random tangents give
    G ≈ n·I). Each kernel's update is one matmul (A·diag(c/√r))·Bᵀ over the K·r columns (a
    zero column added when K·r = 1: XLA would rewrite that dot as an elementwise outer product
    and fuse the factors' sampler into it, recomputing it per entry: measured 1.9× slower).

    Args:
      tangents: the K tangents.
      d: their directional derivatives, shape (K,).
      combine: ``"mean"`` or ``"projection"``.

    Returns:
      The estimate, a pytree like params (each leaf in its dtype).
    """
    k = d.shape[0]
    if combine == "projection":
        dtype = _solve_dtype(tangents)
        lam, w = jnp.linalg.eigh(low_rank_gram(tangents))
        keep = lam > lam[-1] * float(k * jnp.finfo(dtype).eps)
        inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
        c = jnp.matmul(w, inv * jnp.matmul(w.T, d.astype(dtype), precision=_HIGHEST),
                       precision=_HIGHEST)
    else:
        c = d / k
    scale = c / math.sqrt(tangents.rank)

    def update(a, b, shape):
        a = a * scale.astype(a.dtype)[:, None, None]
        if a.shape[0] * a.shape[2] == 1:  # a zero column keeps a K·r = 1 update a matmul:
            a, b = (jnp.concatenate([x, jnp.zeros_like(x)], axis=2) for x in (a, b))
        return jnp.einsum("kmr,knr->mn", a, b, precision=_HIGHEST).reshape(shape).astype(a.dtype)

    return tangents.per_leaf(update, lambda v: jnp.tensordot(c.astype(v.dtype), v, axes=1))


def low_rank_forward_gradient(fun: Callable[[PyTree], jax.Array], params: PyTree,
                              key: jax.Array, num_tangents: int = 1,
                              distribution: str = "normal", rank: int = 1
                              ) -> tuple[LowRankTangents, jax.Array, jax.Array]:
    """Draws low-rank tangents for the layers ``fun`` uses and evaluates the factorised jvp.

    Args:
      fun: a scalar function of ``params`` that applies flax models.
      params: the point θ.
      key: PRNG key of the tangents (the same on every device under data parallelism).
      num_tangents, distribution, rank: K, the factors' and i.i.d. entries' law, r.

    Returns:
      ``(tangents, value, d)``; :func:`combine_low_rank` forms the estimate.
    """
    layers = _find_layers(fun, params)
    tangents = sample_low_rank_tangents(key, params, num_tangents, distribution, rank,
                                        sorted(layers.values()))
    value, d = low_rank_jvp(fun, params, tangents, layers)
    return tangents, value, d
