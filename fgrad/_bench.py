"""Benchmarks of the real training step: forward gradient vs backprop (time, FLOPs, memory).

Two experiments share this module:

* :func:`run_bench` (``experiments/bench.py``): for each model and batch size, in one worker
  process, the median per-step wall time of f alone, of a backprop step and of forward-gradient
  steps (normal / Rademacher tangents, K = 1 and 4), plus sampling the tangents alone; the
  ratios R_f = T(fwd step)/T(f), R_b = T(bp step)/T(f) and fwd/bp; XLA's FLOP count and the
  achieved FLOP/s; compile time; XLA's memory analysis, the process peak RSS and (GPU) the
  device peak. Written to ``<out>/<device slug>.json`` and ``.md``.
* :func:`run_depth_sweep` (``experiments/depth_sweep.py``): the MLP at fixed width over depths:
  R_f, R_b and each step's peak memory split into parameter-sized buffers and the rest.

Protocol. Steps are built with fgrad's own :func:`~fgrad._train.make_train_step`,
:func:`~fgrad._schedules.make_optimizer` and :func:`~fgrad._sources.make_source`, jitted with the
state donated, on a synthetic batch passed as argument (so the data set never counts in memory).
Every callable of a case is compiled and warmed up first, then timed in interleaved rounds
(each round runs every method once, in a rotated order, for ≥ ``min_round_s``) and the median
over rounds is reported, so load from other processes hits all methods alike. Each step is
timed both as one step per call from a Python loop (``"python"``) and as a ``lax.scan`` of S
steps per call (``"scan"``); the headline uses the loop style the training loop uses for the
model (:data:`fgrad._train.DEFAULT_STEPS_PER_CALL`).
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fgrad._env import environment
from fgrad._memory import compiled_memory, device_peak_bytes, process_peak_rss_bytes
from fgrad._models import IMAGE_SHAPE, NUM_CLASSES, cross_entropy_loss, init_params, make_model
from fgrad._results import write_json
from fgrad._schedules import make_optimizer
from fgrad._sources import make_source
from fgrad._tangents import sample_tangents
from fgrad._train import Data, TrainState, make_multi_step, make_train_step, steps_per_call

PyTree = Any
LOOPS = ("python", "scan")
# A learning rate small enough that thousands of timed steps leave the parameters near their
# initial values (the step's arithmetic does not depend on its value).
BENCH_LEARNING_RATE = 1e-6


class Method(NamedTuple):
    """One timed callable of a benchmark case.

    Attributes:
      name: e.g. ``"f"``, ``"backprop"``, ``"fwd-normal-k1"``, ``"sample-normal-k1"``.
      kind: ``"f"`` (the loss alone), ``"step"`` (a training step) or ``"sample"`` (drawing
        the tangents alone).
      source: ``"backprop"`` or ``"forward"`` for steps, else None.
      distribution: the tangent distribution (forward steps and sampling), else None.
      num_tangents: K (forward steps and sampling), else None.
    """

    name: str
    kind: str
    source: str | None = None
    distribution: str | None = None
    num_tangents: int | None = None


def default_methods(distributions: Sequence[str] = ("normal", "rademacher"),
                    num_tangents: Sequence[int] = (1, 4)) -> list[Method]:
    """f, the backprop step, and a forward step plus its sampling per (distribution, K)."""
    out = [Method("f", "f"), Method("backprop", "step", "backprop")]
    for dist in distributions:
        for k in num_tangents:
            out.append(Method(f"fwd-{dist}-k{k}", "step", "forward", dist, k))
    for dist in distributions:
        for k in num_tangents:
            out.append(Method(f"sample-{dist}-k{k}", "sample", None, dist, k))
    return out


def method_from_name(name: str) -> Method:
    """The :class:`Method` a name like ``"fwd-normal-k4"`` or ``"backprop"`` stands for."""
    if name in ("f", "backprop"):
        return Method(name, "f" if name == "f" else "step", None if name == "f" else name)
    m = re.fullmatch(r"(fwd|sample)-(normal|rademacher)-k(\d+)", name)
    if not m:
        raise ValueError(f"unknown benchmark method {name!r}: use f, backprop, "
                         "fwd-<normal|rademacher>-k<K> or sample-<normal|rademacher>-k<K>")
    kind = "step" if m[1] == "fwd" else "sample"
    return Method(name, kind, "forward" if kind == "step" else None, m[2], int(m[3]))


# ----------------------------------------------------------------------------------------------
# Building the callables
# ----------------------------------------------------------------------------------------------


def synthetic_data(batch_size: int, seed: int = 0) -> Data:
    """One batch of random images in [0, 1) and labels, as the training loop's :class:`Data`
    (a single epoch whose permutation is the identity)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    images = jax.random.uniform(k1, (batch_size, *IMAGE_SHAPE), jnp.float32)
    labels = jax.random.randint(k2, (batch_size,), 0, NUM_CLASSES, jnp.int32)
    return Data(images, labels, jnp.arange(batch_size, dtype=jnp.int32)[None])


def _f_fn(loss_fn: Callable, scan_steps: int) -> Callable:
    """f(params, images, labels), or a scan of it whose steps depend on each other (the input is
    shifted by 0·f of the previous step, so XLA cannot hoist f out of the loop)."""
    if scan_steps == 1:
        return loss_fn

    def f_scan(params, images, labels):
        def body(c, _):
            loss = loss_fn(params, images + c, labels)
            return loss * 0.0, loss
        return jax.lax.scan(body, jnp.zeros((), images.dtype), length=scan_steps)[1]

    return f_scan


def _sample_fn(method: Method, scan_steps: int) -> Callable:
    """sample(key, params) -> tangents, or a scan that draws fresh tangents each step (and sums
    them, so every entry is computed)."""
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
    tx = make_optimizer(make_source(method.source, seed, method._asdict()), BENCH_LEARNING_RATE)
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    return make_train_step(loss_fn, tx, batch_size), state


def _copy(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


class Compiled(NamedTuple):
    """A compiled callable ready to time: ``run()`` makes one call and blocks."""

    run: Callable[[], None]
    compiled: Any
    compile_s: float
    steps: int


def compile_method(method: Method, loss_fn: Callable, params: PyTree, data: Data,
                   scan_steps: int = 1, seed: int = 0,
                   compiler_options: dict[str, Any] | None = None) -> Compiled:
    """Compiles one method (``scan_steps`` steps per call) and wraps it for timing.

    Args:
      method: what to compile.
      loss_fn: ``loss(params, images, labels)``.
      params: the model's parameters (copied; steps donate their own state).
      data: the batch (:func:`synthetic_data`).
      scan_steps: steps per call; 1 is a plain jitted step.
      seed: the tangents' seed.
      compiler_options: XLA debug options for this compilation only (e.g. to compare flags in
        one process).

    Returns:
      A :class:`Compiled`.
    """
    opts = compiler_options or None
    batch_size = int(data.images.shape[0])
    t0 = time.perf_counter()
    if method.kind == "f":
        x, y = data.images, data.labels
        compiled = jax.jit(_f_fn(loss_fn, scan_steps)).lower(params, x, y).compile(opts)
        compile_s = time.perf_counter() - t0
        return Compiled(lambda: jax.block_until_ready(compiled(params, x, y)), compiled,
                        compile_s, scan_steps)
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

    return Compiled(run, compiled, compile_s, scan_steps)


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


def memory(compiled: Any) -> dict[str, int]:
    """XLA's memory analysis (see :func:`fgrad._memory.compiled_memory`) plus XLA's own peak
    (``peak_memory_in_bytes``) where the backend reports it."""
    out = compiled_memory(compiled)
    ma = compiled.memory_analysis()
    peak = getattr(ma, "peak_memory_in_bytes", None) if ma is not None else None
    if peak:
        out["xla_peak"] = int(peak)
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


# ----------------------------------------------------------------------------------------------
# One benchmark case (model × batch size), run in its own process
# ----------------------------------------------------------------------------------------------


def bench_case(model_name: str, batch_size: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """Benchmarks every method of one model at one batch size, in this process.

    Args:
      model_name: ``"logreg"``, ``"mlp"`` or ``"cnn"``.
      batch_size: B.
      cfg: the bench config (see ``experiments/bench.py``): ``methods``, ``rounds``,
        ``min_round_s``, ``warmup``, ``case_budget_s``, ``max_call_s`` (see
        :func:`time_interleaved`), ``loops`` (loop styles to time), ``loop_batch_sizes``
        (batch sizes at which both loop styles are timed; at others only the training loop's
        style), ``scan_target_s``, ``max_scan_steps``, ``model_kwargs``, ``compiler_options``,
        ``seed``.

    Returns:
      The case's results: per method the per-loop times, compile times, FLOPs and memory, the
      headline time, and the ratios.
    """
    seed = int(cfg.get("seed", 0))
    model = make_model(model_name, **cfg.get("model_kwargs", {}).get(model_name, {}))
    params = init_params(model, jax.random.key(seed))
    loss_fn = cross_entropy_loss(model)
    data = synthetic_data(batch_size, seed)
    methods = [method_from_name(n) for n in cfg["methods"]]
    opts = cfg.get("compiler_options") or {}
    backend = jax.default_backend()
    train_chunk = steps_per_call(model_name, backend, None)
    loops = [lp for lp in cfg.get("loops", LOOPS) if lp in LOOPS]
    headline = "scan" if train_chunk > 1 and "scan" in loops else "python"
    if batch_size not in cfg.get("loop_batch_sizes", [batch_size]):
        loops = [headline]  # the loop-style check runs at the training batch size only

    per: dict[str, dict[str, Any]] = {}
    single: dict[str, Compiled] = {}
    for m in methods:
        c = compile_method(m, loss_fn, params, data, 1, seed, opts)
        single[m.name] = c
        per[m.name] = {**m._asdict(), "compile_s": {"python": c.compile_s},
                       "flops": flops(c.compiled), "memory": memory(c.compiled)}
    # Warm the single steps up once, measuring each method's peak as it first runs (methods in
    # the given order; process RSS and device peaks are running maxima).
    for m in methods:
        single[m.name].run()
        per[m.name]["process_peak_rss_after"] = process_peak_rss_bytes()
        per[m.name]["device_peak_after"] = device_peak_bytes()

    runs: dict[str, Callable[[], None]] = {}
    steps: dict[str, int] = {}
    if "python" in loops:
        for m in methods:
            runs[f"{m.name}|python"], steps[f"{m.name}|python"] = single[m.name].run, 1
    scan_steps = None
    if "scan" in loops:
        ref = "backprop" if "backprop" in single else methods[0].name
        t0 = time.perf_counter()
        single[ref].run()
        scan_steps = choose_scan_steps(time.perf_counter() - t0, cfg["scan_target_s"],
                                       cfg["max_scan_steps"])
        for m in methods:
            c = compile_method(m, loss_fn, params, data, scan_steps, seed, opts)
            per[m.name]["compile_s"]["scan"] = c.compile_s
            runs[f"{m.name}|scan"], steps[f"{m.name}|scan"] = c.run, scan_steps

    samples = time_interleaved(runs, steps, int(cfg["rounds"]), float(cfg["min_round_s"]),
                               int(cfg.get("warmup", 0)), cfg.get("case_budget_s"),
                               cfg.get("max_call_s"))
    for key, s in samples.items():
        name, loop = key.split("|")
        per[name].setdefault("time", {})[loop] = summarize(s)
    for row in per.values():
        mode = headline if headline in row["time"] else next(iter(row["time"]))
        row["ms"] = row["time"][mode]["ms"]
        row["loop"] = mode
        row["gflops"] = None if row["flops"] is None else row["flops"] / 1e9
        row["gflops_per_s"] = (None if row["flops"] is None else
                               row["flops"] / (row["ms"] * 1e-3) / 1e9)

    return {
        "model": model_name, "batch_size": batch_size, "backend": backend,
        "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
        "param_bytes": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))),
        "training_steps_per_call": train_chunk, "headline_loop": headline,
        "scan_steps": scan_steps, "methods": per, "ratios": case_ratios(per),
        "loop_check": loop_check(per, headline),
        "process_peak_rss": process_peak_rss_bytes(), "device_peak": device_peak_bytes(),
        "env": environment(),
    }


def case_ratios(per: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """R_b, R_f, fwd/bp and the sampling share per forward method, from headline times.

    R_f = T(fwd step)/T(f), R_b = T(bp step)/T(f), fwd_over_bp = T(fwd step)/T(bp step),
    sampling_share = T(sampling its tangents alone)/T(fwd step) (in the headline loop style; in a
    scan the drawn tangents are summed, not stored), and ``sampling_share_python`` with both
    timed one call per step (tangents stored).
    """
    f = per.get("f", {}).get("ms")
    bp = per.get("backprop", {}).get("ms")
    out: dict[str, dict[str, float]] = {}
    if f and bp:
        out["backprop"] = {"R_b": bp / f}
    for name, row in per.items():
        if row["kind"] != "step" or row["source"] != "forward":
            continue
        r: dict[str, float] = {}
        if f:
            r["R_f"] = row["ms"] / f
        if bp:
            r["fwd_over_bp"] = row["ms"] / bp
        sample = per.get(name.replace("fwd-", "sample-", 1))
        if sample:
            r["sampling_share"] = sample["ms"] / row["ms"]
            py_s, py_f = (x.get("time", {}).get("python", {}).get("ms") for x in (sample, row))
            if py_s and py_f:  # both stored and dispatched once per call
                r["sampling_share_python"] = py_s / py_f
        out[name] = r
    return out


def loop_check(per: dict[str, dict[str, Any]], headline: str) -> dict[str, dict[str, Any]]:
    """Per training step (and f): the per-step time of each loop style, the fastest, and the
    training loop's style relative to it (the target is ≤ 1.2). Sampling alone is left out: in
    a scan its tangents are summed rather than stored, so its two loop styles differ in work."""
    out = {}
    for name, row in per.items():
        if row["kind"] == "sample":
            continue
        times = {lp: t["ms"] for lp, t in row.get("time", {}).items()}
        if len(times) < 2:
            continue
        fastest = min(times, key=times.get)
        out[name] = {**{f"{lp}_ms": v for lp, v in times.items()}, "fastest": fastest,
                     "training_loop": headline,
                     "training_over_fastest": times[headline] / times[fastest]}
    return out


# ----------------------------------------------------------------------------------------------
# The whole benchmark: one process per case, JSON + Markdown
# ----------------------------------------------------------------------------------------------


def device_slug(env: dict[str, Any]) -> str:
    """A file-name slug for the machine, e.g. ``"cpu-amd-epyc-2c"`` or ``"gpu-nvidia-h100"``."""
    def slug(s: str) -> str:
        s = re.sub(r"\(r\)|\(tm\)|\bcpu\b|processor|\d+-core|@.*$", " ", s.lower())
        return re.sub(r"[^a-z0-9]+", "-", s).strip("-")

    if env.get("platform") == "cpu":
        return f"cpu-{slug(str(env.get('cpu', 'unknown')))}-{env.get('cpu_cores')}c"
    device = str(env.get("device", env.get("platform", "device")))
    return f"{env.get('platform', 'gpu')}-{slug(device)}"


def run_in_subprocess(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned Python process (its own JAX runtime and peak RSS)."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def run_bench(cfg: dict[str, Any], out_dir: str | Path, isolate: bool = True,
              log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Runs every (model, batch size) case and writes ``<slug>.json`` and ``<slug>.md``.

    Args:
      cfg: the bench config (``models``, ``batch_sizes`` and the keys of :func:`bench_case`).
      out_dir: the output directory.
      isolate: run each case in its own spawned process (per-case peak RSS and device peak);
        False runs them in this process.
      log: progress printer.

    Returns:
      The JSON and Markdown paths.
    """
    cases = []
    for batch_size in cfg["batch_sizes"]:
        for model_name in cfg["models"]:
            t0 = time.perf_counter()
            args = (model_name, int(batch_size), cfg)
            case = run_in_subprocess(bench_case, *args) if isolate else bench_case(*args)
            case["wall_s"] = time.perf_counter() - t0
            cases.append(case)
            log(case_line(case))
    env = cases[0]["env"] if cases else environment()
    for case in cases:
        case.pop("env", None)
    result = {"env": env, "device_slug": device_slug(env), "config": cfg, "cases": cases}
    out_dir = Path(out_dir)
    json_path = out_dir / f"{result['device_slug']}.json"
    md_path = out_dir / f"{result['device_slug']}.md"
    write_json(json_path, result)
    md_path.write_text(bench_markdown(result))
    return json_path, md_path


def case_line(case: dict[str, Any]) -> str:
    """One progress line: the headline ms/step of each method of a case."""
    parts = [f"{n} {r['ms']:.3g}" for n, r in case["methods"].items()]
    return (f"[bench] {case['model']} B={case['batch_size']} ({case['headline_loop']}, "
            f"{case['wall_s']:.0f} s): " + ", ".join(parts) + " ms")


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec)


def _mib(x: int | None) -> str:
    return "–" if x is None else f"{x / 2**20:.1f}"


def bench_markdown(result: dict[str, Any]) -> str:
    """The Markdown report of :func:`run_bench`: machine and versions, the per-method table,
    and the loop-style check."""
    env = result["env"]
    lines = [
        f"# Step benchmark: {env.get('device')}",
        "",
        f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax {env.get('flax')}, "
        f"optax {env.get('optax')}, numpy {env.get('numpy')}, Python {env.get('python')}; "
        f"{env.get('cpu_cores')} CPU cores ({env.get('cpu')}); date {env.get('date')}.",
        f"XLA_FLAGS: `{env.get('xla_flags') or '(none)'}`.",
        "",
        "Median per-step wall time over interleaved rounds, in the loop style the training loop "
        "uses (python: one jitted step per call; scan: S steps per call). R = T/T(f); "
        "vs bp = T/T(backprop step); sampling = drawing that step's tangents alone (share of "
        "the step). FLOPs from XLA's cost analysis; memory from XLA's memory analysis of the "
        "compiled step (arguments + outputs − donated + temporaries).",
        "",
        "| model | B | loop | method | ms/step | R | vs bp | sampling ms (share) | GFLOP | "
        "GFLOP/s | compile s | XLA peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        per, ratios = case["methods"], case["ratios"]
        f_ms, bp_ms = per.get("f", {}).get("ms"), per.get("backprop", {}).get("ms")
        for name, row in per.items():
            if row["kind"] == "sample":
                continue
            sample = per.get(name.replace("fwd-", "sample-", 1)) if name.startswith("fwd-") \
                else None
            share = ratios.get(name, {}).get("sampling_share")
            samp = "–" if sample is None else f"{sample['ms']:.3g} ({100 * share:.0f} %)"
            lines.append(
                f"| {case['model']} | {case['batch_size']} | {row['loop']} | {name} | "
                f"{row['ms']:.3g} | {_fmt(row['ms'] / f_ms if f_ms else None)} | "
                f"{_fmt(row['ms'] / bp_ms if bp_ms else None)} | {samp} | "
                f"{_fmt(row['gflops'])} | {_fmt(row['gflops_per_s'], '.1f')} | "
                f"{_fmt(row['compile_s'].get(row['loop']), '.2f')} | "
                f"{_mib(row['memory'].get('peak_estimate'))} |")
    lines += ["", "Process peak RSS per case (whole process: runtime, all methods): " + ", ".join(
        f"{c['model']}/B={c['batch_size']} {_mib(c['process_peak_rss'])} MiB"
        + ("" if c.get("device_peak") is None else f" (device {_mib(c['device_peak'])} MiB)")
        for c in result["cases"]) + "."]
    checks = [(c, n, v) for c in result["cases"] for n, v in c["loop_check"].items()]
    if checks:
        lines += ["", "## Loop style: Python loop vs lax.scan (ms/step)", "",
                  "| model | B | method | python | scan (S) | fastest | training uses | "
                  "training / fastest |", "|---|---|---|---|---|---|---|---|"]
        for c, n, v in checks:
            lines.append(f"| {c['model']} | {c['batch_size']} | {n} | {v['python_ms']:.3g} | "
                         f"{v['scan_ms']:.3g} ({c['scan_steps']}) | {v['fastest']} | "
                         f"{v['training_loop']} | {v['training_over_fastest']:.2f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Depth sweep: MLP of fixed width, memory and time per depth
# ----------------------------------------------------------------------------------------------


DEPTH_METHODS = ("f", "backprop", "fwd-normal-k1")


def memory_breakdown(full: dict[str, int], at_half: dict[str, int], batch_size: int,
                     half_batch: int, param_bytes: int) -> dict[str, Any]:
    """Splits a step's XLA peak into parameter-sized buffers and the rest (what the batch adds).

    XLA's peak of a step is affine in the batch size B, peak(B) = a + b·B: ``a`` holds the
    buffers that do not depend on the batch (parameters, tangents, gradient, update: the
    parameter-sized buffers) and b·B the activations kept for the backward pass, the forward
    pass's working set and the batch itself. Two compilations, at B and at B/2, give
    b = (peak(B) − peak(B/2))/(B − B/2), rest = b·B and parameter_sized = peak(B) − rest.
    (Batch 1 is not used as the reference: XLA turns some dots with a contracting dimension of
    1 into fused products, which changes the parameter-sized part.)

    Args:
      full: :func:`memory` of the step at batch size ``batch_size``.
      at_half: :func:`memory` of the same step at batch size ``half_batch``.
      batch_size: B.
      half_batch: the reference batch size (< B).
      param_bytes: bytes of one copy of the parameters.

    Returns:
      ``total``, ``parameter_sized``, ``rest`` (bytes), ``parameter_copies`` (parameter_sized
      / param_bytes), ``rest_over_total``, and the raw analyses.
    """
    total, ref = full["peak_estimate"], at_half["peak_estimate"]
    rest = round((total - ref) * batch_size / (batch_size - half_batch))
    return {"total": total, "parameter_sized": total - rest, "rest": rest,
            "parameter_copies": (total - rest) / param_bytes, "rest_over_total": rest / total,
            "reference_batch_size": half_batch, "xla": full, "xla_reference": at_half}


def depth_case(width: int, depth: int, batch_size: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """One (depth, batch size) of the depth sweep, in this process.

    Args:
      width: MLP width.
      depth: number of hidden layers.
      batch_size: B.
      cfg: ``rounds``, ``min_round_s``, ``warmup``, ``seed``, ``time`` (False: memory only),
        ``compiler_options``.

    Returns:
      A row: times and R_f, R_b; per step the memory breakdown.
    """
    seed = int(cfg.get("seed", 0))
    opts = cfg.get("compiler_options") or {}
    model = make_model("mlp", width=width, depth=depth)
    params = init_params(model, jax.random.key(seed))
    loss_fn = cross_entropy_loss(model)
    param_bytes = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))
    half = max(1, batch_size // 2)
    data, data_half = synthetic_data(batch_size, seed), synthetic_data(half, seed)
    row: dict[str, Any] = {"width": width, "depth": depth, "batch_size": batch_size,
                           "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
                           "param_bytes": param_bytes, "methods": {}}
    runs, steps = {}, {}
    for name in cfg.get("methods", DEPTH_METHODS):
        m = method_from_name(name)
        c = compile_method(m, loss_fn, params, data, 1, seed, opts)
        entry = {"compile_s": c.compile_s, "flops": flops(c.compiled)}
        if m.kind == "step":
            ch = compile_method(m, loss_fn, params, data_half, 1, seed, opts)
            entry["memory"] = memory_breakdown(memory(c.compiled), memory(ch.compiled),
                                               batch_size, half, param_bytes)
            del ch
        row["methods"][name] = entry
        runs[name], steps[name] = c.run, 1
    if cfg.get("time", True):
        for name, run in runs.items():  # first runs, smallest expected peak first
            run()
            row["methods"][name]["process_peak_rss_after"] = process_peak_rss_bytes()
            row["methods"][name]["device_peak_after"] = device_peak_bytes()
        samples = time_interleaved(runs, steps, int(cfg["rounds"]), float(cfg["min_round_s"]),
                                   int(cfg.get("warmup", 1)))
        for name, s in samples.items():
            row["methods"][name]["time"] = summarize(s)
        f_ms = row["methods"].get("f", {}).get("time", {}).get("ms")
        if f_ms:
            for name, entry in row["methods"].items():
                if name != "f":
                    entry["R"] = entry["time"]["ms"] / f_ms
        row["R_b"] = row["methods"].get("backprop", {}).get("R")
        row["R_f"] = row["methods"].get("fwd-normal-k1", {}).get("R")
    fwd = row["methods"].get("fwd-normal-k1", {}).get("memory")
    bp = row["methods"].get("backprop", {}).get("memory")
    if fwd and bp:
        row["fwd_over_bp_total"] = fwd["total"] / bp["total"]
    row["process_peak_rss"] = process_peak_rss_bytes()
    row["device_peak"] = device_peak_bytes()
    return row


def run_depth_sweep(cfg: dict[str, Any], out_dir: str | Path, isolate: bool = True,
                    log: Callable[[str], None] = print) -> Path:
    """Runs the depth sweep and writes ``<out_dir>/depth_sweep.json`` (and ``.md``).

    Args:
      cfg: ``width``, ``depths``, ``batch_sizes`` and the keys of :func:`depth_case`.
      out_dir: output directory.
      isolate: one spawned process per (batch size, depth).
      log: progress printer.

    Returns:
      The JSON path.
    """
    rows = []
    env = None
    for batch_size in cfg["batch_sizes"]:
        for depth in cfg["depths"]:
            args = (int(cfg["width"]), int(depth), int(batch_size), cfg)
            if isolate:
                row, env = run_in_subprocess(_depth_case_with_env, *args)
            else:
                row, env = _depth_case_with_env(*args)
            rows.append(row)
            log(depth_line(row))
    result = {"env": env or environment(), "config": cfg, "rows": rows,
              "summary": depth_summary(rows)}
    out_dir = Path(out_dir)
    path = out_dir / "depth_sweep.json"
    write_json(path, result)
    (out_dir / "depth_sweep.md").write_text(depth_markdown(result))
    return path


def _depth_case_with_env(width: int, depth: int, batch_size: int, cfg: dict[str, Any]
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    return depth_case(width, depth, batch_size, cfg), environment()


def depth_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per batch size: growth of each step's non-parameter memory from the second-smallest
    depth to the deepest (ratio), and fwd/bp total peak at the deepest depth."""
    out = {}
    for b in sorted({r["batch_size"] for r in rows}):
        rs = sorted((r for r in rows if r["batch_size"] == b), key=lambda r: r["depth"])
        if len(rs) < 2:
            continue
        lo, hi = rs[1] if len(rs) > 2 else rs[0], rs[-1]
        entry: dict[str, Any] = {"from_depth": lo["depth"], "to_depth": hi["depth"]}
        for name in ("backprop", "fwd-normal-k1"):
            a = lo["methods"].get(name, {}).get("memory")
            z = hi["methods"].get(name, {}).get("memory")
            if a and z:
                entry[f"{name}_rest_growth"] = z["rest"] / max(a["rest"], 1)
        entry["fwd_over_bp_total_deepest"] = hi.get("fwd_over_bp_total")
        out[str(b)] = entry
    return out


def depth_line(row: dict[str, Any]) -> str:
    """One progress line of the depth sweep."""
    ms = {n: e.get("time", {}).get("ms") for n, e in row["methods"].items()}
    mem = {n: e["memory"] for n, e in row["methods"].items() if "memory" in e}
    return (f"[depth] B={row['batch_size']} depth={row['depth']}: "
            + ", ".join(f"{n} {_fmt(v)} ms" for n, v in ms.items())
            + f"; R_f {_fmt(row.get('R_f'))}, R_b {_fmt(row.get('R_b'))}; "
            + ", ".join(f"{n} peak {_mib(m['total'])} MiB (rest {_mib(m['rest'])})"
                        for n, m in mem.items()))


def depth_markdown(result: dict[str, Any]) -> str:
    """Markdown table of the depth sweep."""
    env = result["env"]
    lines = [f"# MLP depth sweep (width {result['config']['width']}): {env.get('device')}", "",
             f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}; XLA_FLAGS "
             f"`{env.get('xla_flags') or '(none)'}`. Peak = XLA memory analysis of the compiled "
             "step (arguments + outputs − donated + temporaries); rest = what the batch adds "
             "(peak(B) − peak(B/2), scaled to B: activations, working set, the batch); "
             "param-sized = peak − rest (parameters, tangents, gradient, update). MiB.", "",
             "| B | depth | params (MiB) | R_f | R_b | fwd peak | fwd param-sized | fwd rest | "
             "bp peak | bp param-sized | bp rest | fwd/bp peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fw = r["methods"].get("fwd-normal-k1", {}).get("memory", {})
        bp = r["methods"].get("backprop", {}).get("memory", {})
        lines.append(
            f"| {r['batch_size']} | {r['depth']} | {_mib(r['param_bytes'])} | "
            f"{_fmt(r.get('R_f'))} | {_fmt(r.get('R_b'))} | {_mib(fw.get('total'))} | "
            f"{_mib(fw.get('parameter_sized'))} | {_mib(fw.get('rest'))} | "
            f"{_mib(bp.get('total'))} | {_mib(bp.get('parameter_sized'))} | "
            f"{_mib(bp.get('rest'))} | {_fmt(r.get('fwd_over_bp_total'), '.2f')} |")
    return "\n".join(lines) + "\n"
