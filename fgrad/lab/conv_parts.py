"""The CNN's convolutions timed by part: what bounds its backprop step on a CPU.

A backprop step runs each convolution three times over the same FLOPs: the forward convolution,
the input gradient (a convolution of the output gradient with the flipped kernel) and the kernel
gradient (a contraction over batch and space). :func:`time_conv_parts` times the three, as XLA
compiles them for ``jax.vjp``, for every distinct convolution of a model (its input and kernel
shapes, recorded with ``flax.linen.intercept_methods``), and two rewrites of the kernel gradient
as matrix products, the usual way around a slow backward convolution:

* ``kernel grad, patches · dy``: the kh·kw shifted windows of the padded input stacked into an
  (N, kh·kw·C_in) patch matrix (N = B·H·W), contracted with dy (N, C_out) in one dot;
* ``kernel grad, kh·kw dots``: one (C_in × N)·(N × C_out) dot per kernel offset, no patch matrix.

Each part's FLOP rate is set against the forward convolution's (XLA's FLOP count of the part
over its median time); the rewrites' largest relative deviation from XLA's kernel gradient is
recorded. Only stride-1, undilated, ungrouped ``SAME``/``VALID`` convolutions are timed
(fgrad's CNN has nothing else).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fgrad._types import PyTree
from fgrad.lab.timing import flops, summarize, time_interleaved

_DN = ("NHWC", "HWIO", "NHWC")
PARTS = ("forward", "input grad", "kernel grad", "kernel grad, patches · dy",
         "kernel grad, kh·kw dots")


def conv_shapes(model: nn.Module, params: PyTree, images: jax.Array
                ) -> list[tuple[tuple[int, ...], tuple[int, ...], str]]:
    """(input shape, kernel shape, padding) of every distinct ``nn.Conv`` call of ``model``."""
    found: list[tuple[tuple[int, ...], tuple[int, ...], str]] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if type(module) is nn.Conv and context.method_name == "__call__":
            kernel = module.get_variable("params", "kernel")
            key = (tuple(args[0].shape), tuple(kernel.shape), str(module.padding))
            if key not in found:
                found.append(key)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.apply, {"params": params}, images)
    return found


def _padded(x: jax.Array, kernel_shape: tuple[int, ...], padding: str) -> jax.Array:
    if padding == "VALID":
        return x
    kh, kw = kernel_shape[:2]
    return jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))


def _windows(x: jax.Array, kernel_shape: tuple[int, ...], out_hw: tuple[int, int]
             ) -> list[jax.Array]:
    kh, kw = kernel_shape[:2]
    h, w = out_hw
    return [x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)]


def _parts(kernel_shape: tuple[int, ...], padding: str) -> dict[str, Callable]:
    """Part name → ``fn(x, w, dy)`` (each is jitted by the caller)."""
    c_in, c_out = kernel_shape[2:]

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)

    def patches(x, w, dy):
        cols = _windows(_padded(x, kernel_shape, padding), kernel_shape, dy.shape[1:3])
        p = jnp.concatenate(cols, axis=-1).reshape(-1, len(cols) * c_in)
        return (p.T @ dy.reshape(-1, c_out)).reshape(kernel_shape)

    def shifted_dots(x, w, dy):
        d = dy.reshape(-1, c_out)
        cols = _windows(_padded(x, kernel_shape, padding), kernel_shape, dy.shape[1:3])
        return jnp.stack([c.reshape(-1, c_in).T @ d for c in cols]).reshape(kernel_shape)

    return {
        "forward": lambda x, w, dy: conv(x, w),
        "input grad": lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0],
        "kernel grad": lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0],
        "kernel grad, patches · dy": patches,
        "kernel grad, kh·kw dots": shifted_dots,
    }


def _call(compiled: Any, args: tuple) -> None:
    jax.block_until_ready(compiled(*args))


def time_conv_parts(model: nn.Module, params: PyTree, batch_size: int, cfg: dict[str, Any],
                    seed: int = 0) -> list[dict[str, Any]]:
    """Times :data:`PARTS` for every distinct convolution of ``model`` at ``batch_size``.

    Args:
      model: a flax model taking ``(B, 28, 28, 1)`` images.
      params: its parameters (only their shapes matter).
      batch_size: B.
      cfg: the bench config (``rounds``, ``min_round_s``, ``warmup``, ``case_budget_s``).
      seed: for the random inputs.

    Returns:
      One dict per convolution: ``input``, ``kernel``, ``padding`` and ``parts``, part name →
      ``{"ms", …, "flops", "gflops_per_s", "rate_vs_forward", "max_rel_err"}`` (the last for the
      rewrites: max |rewrite − XLA| / max |XLA| over the kernel gradient's entries).
    """
    images = jnp.zeros((batch_size, 28, 28, 1), jnp.float32)
    out = []
    for k, (x_shape, w_shape, padding) in enumerate(conv_shapes(model, params, images)):
        kx, kw, kd = jax.random.split(jax.random.key(seed + k), 3)
        x = jax.random.normal(kx, x_shape)
        w = jax.random.normal(kw, w_shape) / jnp.sqrt(w_shape[0] * w_shape[1] * w_shape[2])
        fns = _parts(w_shape, padding)
        dy = jax.random.normal(kd, jax.eval_shape(fns["forward"], x, w, None).shape)
        compiled = {n: jax.jit(f).lower(x, w, dy).compile() for n, f in fns.items()}
        results = {n: c(x, w, dy) for n, c in compiled.items()}
        samples = time_interleaved(
            {n: partial(_call, c, (x, w, dy)) for n, c in compiled.items()},
            dict.fromkeys(compiled, 1), int(cfg["rounds"]), float(cfg["min_round_s"]),
            int(cfg.get("warmup", 0)), cfg.get("case_budget_s"))
        parts: dict[str, dict[str, Any]] = {}
        for n, c in compiled.items():
            t = summarize(samples[n])
            fl = flops(c)
            parts[n] = {**t, "flops": fl,
                        "gflops_per_s": None if fl is None else fl / (t["ms"] * 1e-3) / 1e9}
            if n.startswith("kernel grad,"):
                ref = results["kernel grad"]
                err = jnp.max(jnp.abs(results[n] - ref)) / jnp.max(jnp.abs(ref))
                parts[n]["max_rel_err"] = float(err)
        forward_rate = parts["forward"]["gflops_per_s"]
        for row in parts.values():
            row["rate_vs_forward"] = (None if not forward_rate or row["gflops_per_s"] is None
                                      else row["gflops_per_s"] / forward_rate)
        out.append({"input": list(x_shape), "kernel": list(w_shape), "padding": padding,
                    "parts": parts})
    return out
