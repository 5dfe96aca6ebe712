"""The step benchmark (``experiments/bench.py``): forward gradient vs backprop per model and
batch size — time, FLOPs, memory.

For each model and batch size, in one worker process: the median per-step wall time of f
alone, of a backprop step and of forward-gradient steps (normal / Rademacher tangents, K = 1
and 4, i.i.d. and low-rank: ``fwd-lowrank-normal-k1-r1``, see :mod:`fgrad._lowrank`), plus
sampling the tangents alone; the ratios R_f = T(fwd step)/T(f), R_b = T(bp step)/T(f) and
fwd/bp; XLA's FLOP count (and its ratio to the backprop step's) and the achieved FLOP/s;
compile time; XLA's memory analysis, the process peak RSS and (GPU) the device peak. Each
step is timed both as one step per call from a Python loop (``"python"``) and as a
``lax.scan`` of S steps per call (``"scan"``); the headline uses the loop style the training
loop uses for the model (:data:`fgrad.lab.build.DEFAULT_STEPS_PER_CALL`). The protocol is
:mod:`fgrad.lab.timing`'s.
Written to ``<out>/<device slug>.json`` and ``.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from fgrad._env import environment
from fgrad._memory import device_peak_bytes, process_peak_rss_bytes
from fgrad._results import write_json
from fgrad.analysis.bench import bench_markdown, case_line
from fgrad.lab.build import build_model, steps_per_call
from fgrad.lab.config import to_dict
from fgrad.lab.conv_parts import time_conv_parts
from fgrad.lab.run import RunOptions
from fgrad.lab.timing import (
    LOOPS,
    Compiled,
    choose_scan_steps,
    compile_method,
    device_slug,
    flops,
    memory,
    method_from_name,
    run_in_subprocess,
    summarize,
    time_interleaved,
)
from fgrad.train.step import synthetic_data


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
        ``seed``, ``conv_parts_batch_sizes`` (batch sizes at which a model's convolutions are
        also timed by part, :mod:`fgrad.lab.conv_parts`).

    Returns:
      The case's results: per method the per-loop times, compile times, FLOPs and memory, the
      headline time, and the ratios.
    """
    seed = int(cfg.get("seed", 0))
    built = build_model(model_name, cfg.get("model_kwargs", {}).get(model_name, {}),
                        jax.random.key(seed))
    params, loss_fn = built.params, built.loss_fn
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
        c = compile_method(m, loss_fn, params, data, batch_size, 1, seed, opts)
        single[m.name] = c
        per[m.name] = {**m._asdict(), "compile_s": {"python": c.compile_s},
                       "flops": flops(c.compiled), "memory": memory(c.compiled, c.data_bytes)}
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
        # the training loop's steps per call (one protocol for T(f) and the steps), fewer
        # where one call would exceed scan_target_s
        cap = min(int(cfg["max_scan_steps"]), train_chunk if train_chunk > 1 else 10**9)
        scan_steps = choose_scan_steps(time.perf_counter() - t0, cfg["scan_target_s"], cap)
        for m in methods:
            c = compile_method(m, loss_fn, params, data, batch_size, scan_steps, seed, opts)
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

    conv = (time_conv_parts(built.module, params, batch_size, cfg, seed)
            if batch_size in cfg.get("conv_parts_batch_sizes", []) else [])
    return {
        "model": model_name, "batch_size": batch_size, "backend": backend, "conv_parts": conv,
        "num_params": built.num_params, "param_bytes": built.param_bytes,
        "training_steps_per_call": train_chunk, "headline_loop": headline,
        "scan_steps": scan_steps, "methods": per, "ratios": case_ratios(per),
        "loop_check": loop_check(per, headline),
        "process_peak_rss": process_peak_rss_bytes(), "device_peak": device_peak_bytes(),
        "env": environment(),
    }


def case_ratios(per: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """R_b, R_f, fwd/bp and the sampling share per forward method, from headline times.

    R_f = T(fwd step)/T(f), R_b = T(bp step)/T(f), fwd_over_bp = T(fwd step)/T(bp step),
    flops_over_bp = XLA FLOPs(fwd step)/XLA FLOPs(bp step) (where both are reported),
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
        if row["kind"] != "step" or row["source"] not in ("forward", "activity"):
            continue
        r: dict[str, float] = {}
        if f:
            r["R_f"] = row["ms"] / f
        if bp:
            r["fwd_over_bp"] = row["ms"] / bp
        bp_flops = per.get("backprop", {}).get("flops")
        if row.get("flops") and bp_flops:
            r["flops_over_bp"] = row["flops"] / bp_flops
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


def run(cfg: ConfigDict, out_dir: Path, opts: RunOptions) -> None:
    """Runs the benchmark of ``cfg`` (always: a benchmark is a fresh measurement)."""
    del opts
    json_path, md_path = run_bench(to_dict(cfg), out_dir, isolate=bool(cfg.isolate))
    print(f"wrote {json_path} and {md_path}")
