"""The timed callables of a benchmark case and the timing protocol.

A benchmark *method* (:class:`Method`) is f alone, a training step (backprop or forward
gradient with a tangent distribution and K, i.i.d. or low-rank of rank r), or drawing the
tangents alone. Steps are built with the training layer's own
:func:`~fgrad.train.step.make_train_step` and the experiment layer's
:func:`~fgrad.lab.build.build_optimizer`, jitted with the state donated, on a synthetic data set
the size of MNIST's training set (``synthetic_data``): each step, and each evaluation of f,
gathers its minibatch from it as a training step gathers it from MNIST, so T(f) and the step
times mean the same in the benchmark, the depth sweep and training. The data set is a call
argument; :func:`memory` leaves its bytes out.

Protocol (:func:`time_interleaved`): every callable of a case is compiled and warmed up first,
then timed in interleaved rounds (each round runs every method once, in a rotated order, for
≥ ``min_round_s``) and the median over rounds is reported, so load from other processes hits
all methods alike.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fgrad._lowrank import sample_low_rank_tangents
from fgrad._memory import compiled_memory
from fgrad._tangents import DISTRIBUTIONS, sample_tangents
from fgrad._types import PyTree
from fgrad.lab.build import build_optimizer
from fgrad.train.step import (
    Data,
    TrainState,
    batch_at,
    data_bytes,
    init_state,
    make_multi_step,
    make_train_step,
)

LOOPS = ("python", "scan")
# A learning rate small enough that thousands of timed steps leave the parameters near their
# initial values (the step's arithmetic does not depend on its value).
BENCH_LEARNING_RATE = 1e-6


class Method(NamedTuple):
    """One timed callable of a benchmark case.

    Attributes:
      name: e.g. ``"f"``, ``"backprop"``, ``"fwd-normal-k1"``, ``"sample-normal-k1"``,
        ``"fwd-lowrank-normal-k1-r1"``, ``"sample-lowrank-normal-k1-r1"``, ``"activity-normal-k1"``
        (activity perturbation, Ren et al. 2023, K noise draws per example, ReLU-masked).
      kind: ``"f"`` (the loss alone), ``"step"`` (a training step) or ``"sample"`` (drawing
        the tangents alone).
      source: ``"backprop"``, ``"forward"`` or ``"activity"`` for steps, else None.
      distribution: the tangent distribution (forward steps and sampling), else None.
      num_tangents: K (forward steps and sampling; activity: noise draws), else None.
      tangents: ``"iid"`` or ``"low_rank"`` (forward steps and sampling).
      rank: r of low-rank tangents.
    """

    name: str
    kind: str
    source: str | None = None
    distribution: str | None = None
    num_tangents: int | None = None
    tangents: str = "iid"
    rank: int = 1


def default_methods(distributions: Sequence[str] = DISTRIBUTIONS,
                    num_tangents: Sequence[int] = (1, 4),
                    ranks: Sequence[int] = (1,)) -> list[Method]:
    """f, the backprop step, a forward step plus its sampling per (distribution, K), i.i.d.
    and low-rank (per rank r), and the activity-perturbed step (normal noise, K = 1)."""
    out = [Method("f", "f"), Method("backprop", "step", "backprop"),
           Method("activity-normal-k1", "step", "activity", "normal", 1)]
    for prefix, kind in (("fwd", "step"), ("sample", "sample")):
        source = "forward" if kind == "step" else None
        for dist in distributions:
            for k in num_tangents:
                out.append(Method(f"{prefix}-{dist}-k{k}", kind, source, dist, k))
        for dist in distributions:
            for k in num_tangents:
                out += [Method(f"{prefix}-lowrank-{dist}-k{k}-r{r}", kind, source, dist, k,
                               "low_rank", r) for r in ranks]
    return out


def method_from_name(name: str) -> Method:
    """The :class:`Method` a name like ``"fwd-normal-k4"``, ``"fwd-lowrank-normal-k1-r2"`` or
    ``"backprop"`` stands for."""
    if name in ("f", "backprop"):
        return Method(name, "f" if name == "f" else "step", None if name == "f" else name)
    dists = "|".join(DISTRIBUTIONS)
    if (m := re.fullmatch(rf"activity-({dists})-k(\d+)", name)) and int(m[2]) >= 1:
        return Method(name, "step", "activity", m[1], int(m[2]))
    m = re.fullmatch(rf"(fwd|sample)-(?:(lowrank)-)?({dists})-k(\d+)(?:-r(\d+))?", name)
    if not m or bool(m[2]) != bool(m[5]) or int(m[4]) < 1 or int(m[5] or 1) < 1:
        raise ValueError(f"unknown benchmark method {name!r}: use f, backprop, "
                         f"fwd-<{dists}>-k<K>, sample-<{dists}>-k<K>, activity-<{dists}>-k<K>, "
                         f"fwd-lowrank-<{dists}>-k<K>-r<R> or sample-lowrank-<{dists}>-k<K>-r<R>")
    kind = "step" if m[1] == "fwd" else "sample"
    return Method(name, kind, "forward" if kind == "step" else None, m[3], int(m[4]),
                  "low_rank" if m[2] else "iid", int(m[5] or 1))


# ----------------------------------------------------------------------------------------------
# Building the callables
# ----------------------------------------------------------------------------------------------


def _f_fn(loss_fn: Callable, scan_steps: int, batch_size: int) -> Callable:
    """``f(params, data, start)``: f on the minibatch of step ``start`` gathered from ``data``
    as ``train_step`` gathers it (:func:`~fgrad.train.step.batch_at`), or a scan of f over steps
    ``start … start + scan_steps − 1`` whose evaluations depend on each other (the input is
    shifted by 0·f of the previous one, so XLA cannot hoist f out of the loop)."""

    def f_at(params, data, step, shift):
        images, labels = batch_at(step, data, batch_size)
        return loss_fn(params, images + shift, labels)  # a vector with local losses

    if scan_steps == 1:
        return lambda params, data, start: f_at(params, data, start, 0.0)

    def f_scan(params, data, start):
        def body(c, step):
            loss = f_at(params, data, step, c)
            return jnp.sum(loss) * 0.0, loss
        steps = start + jnp.arange(scan_steps, dtype=jnp.int32)
        return jax.lax.scan(body, jnp.zeros((), data.images.dtype), steps)[1]

    return f_scan


def compile_f(loss_fn: Callable, params: PyTree, data: Data, batch_size: int,
              scan_steps: int = 1, compiler_options: dict[str, Any] | None = None
              ) -> tuple[Callable[[], None], Any]:
    """f compiled as the steps are (:func:`_f_fn`); returns ``(run, compiled)``, where each
    ``run()`` makes one blocking call on the next ``scan_steps`` minibatches, as successive
    training calls do."""
    fn = jax.jit(_f_fn(loss_fn, scan_steps, batch_size))
    start = jnp.zeros((), jnp.int32)
    compiled = fn.lower(params, data, start).compile(compiler_options or None)
    cell = [0]

    def run():
        jax.block_until_ready(compiled(params, data, jnp.asarray(cell[0], jnp.int32)))
        cell[0] += scan_steps

    return run, compiled


def _sample_fn(method: Method, scan_steps: int) -> Callable:
    """sample(key, params) -> tangents, or a scan that draws fresh tangents each step (and sums
    them, so every entry is computed). Low-rank tangents are their factors (and the i.i.d.
    leaves), every leaf of ndim ≥ 2 factorised: the models' kernels."""
    if method.tangents == "low_rank":
        draw = partial(sample_low_rank_tangents, num_tangents=method.num_tangents,
                       distribution=method.distribution, rank=method.rank)
    else:
        draw = partial(sample_tangents, num_tangents=method.num_tangents,
                       distribution=method.distribution)
    if scan_steps == 1:
        return draw

    def sample_scan(key, params):
        def body(carry, _):
            key, acc = carry
            key, sub = jax.random.split(key)
            total = sum(jnp.sum(v, dtype=jnp.float32) for v in jax.tree.leaves(draw(sub, params)))
            return (key, acc + total), None
        return jax.lax.scan(body, (key, jnp.zeros((), jnp.float32)), length=scan_steps)[0][1]

    return sample_scan


def _step_parts(method: Method, loss_fn: Callable, params: PyTree, batch_size: int,
                seed: int) -> tuple[Callable, TrainState]:
    """The training step (``make_train_step``) of a step method and its initial state."""
    tx = build_optimizer(method.source, BENCH_LEARNING_RATE, seed,
                         {**method._asdict(), "num_perturbations": method.num_tangents})
    state = init_state(params, tx)
    return make_train_step(loss_fn, tx, batch_size), state


def _copy(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


class Compiled(NamedTuple):
    """A compiled callable ready to time: ``run()`` makes one call and blocks."""

    run: Callable[[], None]
    compiled: Any
    compile_s: float
    steps: int
    data_bytes: int = 0  # bytes of the data set among its arguments (memory leaves them out)


def compile_method(method: Method, loss_fn: Callable, params: PyTree, data: Data,
                   batch_size: int, scan_steps: int = 1, seed: int = 0,
                   compiler_options: dict[str, Any] | None = None) -> Compiled:
    """Compiles one method (``scan_steps`` steps per call) and wraps it for timing.

    Args:
      method: what to compile.
      loss_fn: ``loss(params, images, labels)``.
      params: the model's parameters (copied; steps donate their own state).
      data: the data set (``synthetic_data``).
      batch_size: B, the minibatch each step gathers from it.
      scan_steps: steps per call; 1 is a plain jitted step.
      seed: the tangents' seed.
      compiler_options: XLA debug options for this compilation only (e.g. to compare flags in
        one process).

    Returns:
      A :class:`Compiled`.
    """
    opts = compiler_options or None
    t0 = time.perf_counter()
    if method.kind == "f":
        run, compiled = compile_f(loss_fn, params, data, batch_size, scan_steps, opts)
        return Compiled(run, compiled, time.perf_counter() - t0, scan_steps, data_bytes(data))
    if method.kind == "sample":
        key = jax.random.key(seed)
        compiled = jax.jit(_sample_fn(method, scan_steps)).lower(key, params).compile(opts)
        compile_s = time.perf_counter() - t0
        return Compiled(lambda: jax.block_until_ready(compiled(key, params)), compiled,
                        compile_s, scan_steps)
    step, state = _step_parts(method, loss_fn, params, batch_size, seed)
    jitted = jax.jit(make_multi_step(step, scan_steps), donate_argnums=0)
    compiled = jitted.lower(state, data).compile(opts)
    compile_s = time.perf_counter() - t0
    cell = [_copy(state)]

    def run():
        cell[0], losses = compiled(cell[0], data)
        jax.block_until_ready((cell[0], losses))

    return Compiled(run, compiled, compile_s, scan_steps, data_bytes(data))


def flops(compiled: Any) -> float | None:
    """XLA's FLOP count of one call of a compiled function (None if not reported)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    value = (cost or {}).get("flops")
    return float(value) if value is not None and value >= 0 else None


def memory(compiled: Any, exclude_bytes: int = 0) -> dict[str, int]:
    """XLA's memory analysis (see :func:`fgrad._memory.compiled_memory`) plus XLA's own peak
    (``peak_memory_in_bytes``) where the backend reports it, with ``exclude_bytes`` (the data
    set's ``data_bytes``, an argument) taken out of ``argument``, ``peak_estimate`` and
    ``xla_peak`` and recorded as ``excluded``."""
    out = compiled_memory(compiled)
    ma = compiled.memory_analysis()
    peak = getattr(ma, "peak_memory_in_bytes", None) if ma is not None else None
    if peak:
        out["xla_peak"] = int(peak)
    if out and exclude_bytes:
        for key in ("argument", "peak_estimate", "xla_peak"):
            if key in out:
                out[key] -= int(exclude_bytes)
        out["excluded"] = int(exclude_bytes)
    return out


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def time_interleaved(runs: dict[str, Callable[[], None]], steps: dict[str, int], rounds: int,
                     min_round_s: float = 0.02, warmup: int = 1, budget_s: float | None = None,
                     max_call_s: float | None = None) -> dict[str, list[float]]:
    """Per-step wall times (seconds) of several callables, measured in interleaved rounds.

    Each round runs every callable ``n`` times back to back (``n`` chosen once so a round lasts
    ≥ ``min_round_s``) and records (elapsed / (n · steps)); the order rotates every round.

    Args:
      runs: name → a function that makes one (blocking) call.
      steps: name → training steps per call.
      rounds: number of rounds (samples per callable), at most.
      min_round_s: minimum duration of one callable's round.
      warmup: untimed calls of each callable before the rounds.
      budget_s: if set, fewer rounds (but at least 3) when the estimated time of ``rounds``
        rounds exceeds it.
      max_call_s: callables whose single call takes longer than this are timed in one round
        only (a pathologically slow variant should not eat the budget).

    Returns:
      name → list of per-step times in seconds (``rounds`` of them, or fewer as above).
    """
    names = list(runs)
    for name in names:
        for _ in range(warmup):
            runs[name]()
    n, call_s = {}, {}
    for name in names:
        t0 = time.perf_counter()
        runs[name]()
        call_s[name] = time.perf_counter() - t0
        n[name] = int(min(1000, max(1, math.ceil(min_round_s / max(call_s[name], 1e-7)))))
    slow = {nm for nm in names if max_call_s is not None and call_s[nm] > max_call_s}
    round_s = sum(n[nm] * call_s[nm] for nm in names if nm not in slow)
    if budget_s is not None and round_s > 0:
        rounds = max(min(rounds, 3), min(rounds, int(budget_s // round_s)))
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name in slow and out[name]:
                continue
            run = runs[name]
            t0 = time.perf_counter()
            for _ in range(n[name]):
                run()
            out[name].append((time.perf_counter() - t0) / (n[name] * steps[name]))
    return out


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, quartiles and minimum of per-step times, in milliseconds."""
    a = 1e3 * np.asarray(samples)
    return {"ms": float(np.median(a)), "ms_p25": float(np.percentile(a, 25)),
            "ms_p75": float(np.percentile(a, 75)), "ms_min": float(a.min()), "n": int(a.size)}


def choose_scan_steps(step_s: float, target_call_s: float, max_steps: int) -> int:
    """Scan length S so one scanned call takes about ``target_call_s`` (2 ≤ S ≤ max_steps)."""
    return int(min(max_steps, max(2, round(target_call_s / max(step_s, 1e-7)))))


def loss_ms(loss_fn: Callable, params: PyTree, data: Data, batch_size: int,
            scan_steps: int, budget_s: float = 3.0) -> dict[str, float]:
    """T(f) measured the way a training step is run: one compiled call evaluates f on
    ``scan_steps`` successive minibatches gathered from the training data (:func:`compile_f`),
    so the per-call dispatch and the batch gather are counted as they are for the steps.

    Args:
      loss_fn: ``loss(params, images, labels)``.
      params: its parameters.
      data: the training data (:class:`~fgrad.train.step.Data`).
      batch_size: B.
      scan_steps: evaluations per call: the run's steps per compiled call.
      budget_s: about how long the timed calls may take in all (3 to 20 calls).

    Returns:
      ``{"ms": median ms per evaluation, "ms_p25", "ms_p75", "ms_min", "n": calls timed,
      "scan_steps": scan_steps, "gathered": True}``.
    """
    scan_steps = max(1, int(scan_steps))
    run, _ = compile_f(loss_fn, params, data, batch_size, scan_steps)
    t0 = time.perf_counter()
    run()  # warm-up, also sizes the repetitions
    reps = int(min(20, max(3, budget_s / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) / scan_steps)
    return {**summarize(times), "scan_steps": scan_steps, "gathered": True}


def device_slug(env: dict[str, Any]) -> str:
    """A file-name slug for the machine, e.g. ``"cpu-amd-epyc-avx2-2c"`` (its vector extension
    when recorded: two machines sold under one model name can differ in it) or
    ``"gpu-nvidia-h100"``."""
    def slug(s: str) -> str:
        s = re.sub(r"\(r\)|\(tm\)|\bcpu\b|processor|\d+-core|@.*$", " ", s.lower())
        return re.sub(r"[^a-z0-9]+", "-", s).strip("-")

    if env.get("platform") == "cpu":
        isa = f"-{env['cpu_isa']}" if env.get("cpu_isa") else ""
        return f"cpu-{slug(str(env.get('cpu', 'unknown')))}{isa}-{env.get('cpu_cores')}c"
    device = str(env.get("device", env.get("platform", "device")))
    return f"{env.get('platform', 'gpu')}-{slug(device)}"


def run_in_subprocess(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned Python process (its own JAX runtime and peak RSS)."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()

