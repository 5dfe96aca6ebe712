"""The depth sweep (``experiments/depth_sweep.py``): the MLP at fixed width over depths —
R_f, R_b and each step's peak memory split into parameter-sized buffers and the rest.
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
from fgrad._results import check_config, read_json, write_json
from fgrad.analysis.depth_sweep import depth_line, depth_markdown
from fgrad.lab import timing
from fgrad.lab.build import build_model, steps_per_call
from fgrad.lab.config import to_dict
from fgrad.lab.run import RunOptions
from fgrad.train.step import synthetic_data

DEPTH_METHODS = ("f", "backprop", "fwd-normal-k1", "fwd-lowrank-normal-k1-r1")
SINGLE_STEP_S = 0.05  # steps at least this long are timed one per call


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


def scan_steps_for(step_s: float, max_steps: int) -> int:
    """Steps per timed call for a step of ``step_s`` seconds: one for a step of at least
    :data:`SINGLE_STEP_S` (its dispatch, tens of µs, is negligible: no scanned version is
    compiled), else about 0.5 s of steps (2 ≤ S ≤ ``max_steps``)."""
    return 1 if step_s >= SINGLE_STEP_S else timing.choose_scan_steps(step_s, 0.5, max_steps)


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
    built = build_model("mlp", {"width": width, "depth": depth}, jax.random.key(seed))
    params, loss_fn = built.params, built.loss_fn
    param_bytes = built.param_bytes
    half = max(1, batch_size // 2)
    data = synthetic_data(batch_size, seed)  # a data set: the B/2 reference gathers from it too
    row: dict[str, Any] = {"width": width, "depth": depth, "batch_size": batch_size,
                           "num_params": built.num_params,
                           "param_bytes": param_bytes, "methods": {}}
    runs, steps = {}, {}
    # Timed as training runs them: the MLP's steps per compiled call on this backend (f too),
    # or fewer (scan_steps_for), so R_f and R_b agree with the training runs' and the
    # benchmark's scan rows
    scan = steps_per_call("mlp", jax.default_backend(), None)
    row["scan_steps"] = {}
    for name in cfg.get("methods", DEPTH_METHODS):
        m = timing.method_from_name(name)
        c = timing.compile_method(m, loss_fn, params, data, batch_size, 1, seed, opts)
        entry = {"compile_s": c.compile_s, "flops": timing.flops(c.compiled)}
        if m.kind == "step":
            ch = timing.compile_method(m, loss_fn, params, data, half, 1, seed, opts)
            entry["memory"] = memory_breakdown(timing.memory(c.compiled, c.data_bytes),
                                               timing.memory(ch.compiled, ch.data_bytes),
                                               batch_size, half, param_bytes)
            del ch
        row["methods"][name] = entry
        if cfg.get("time", True) and scan > 1:
            c.run()
            t0 = time.perf_counter()
            c.run()
            s = scan_steps_for(time.perf_counter() - t0, scan)
            if s > 1:
                c = timing.compile_method(m, loss_fn, params, data, batch_size, s, seed, opts)
        row["scan_steps"][name] = c.steps
        runs[name], steps[name] = c.run, c.steps
    if cfg.get("time", True):
        for name, run in runs.items():  # first runs, smallest expected peak first
            run()
            row["methods"][name]["process_peak_rss_after"] = process_peak_rss_bytes()
            row["methods"][name]["device_peak_after"] = device_peak_bytes()
        # the first runs above are the first of the ``warmup`` untimed calls
        samples = timing.time_interleaved(runs, steps, int(cfg["rounds"]),
                                          float(cfg["min_round_s"]),
                                          max(0, int(cfg.get("warmup", 1)) - 1))
        for name, s in samples.items():
            row["methods"][name]["time"] = timing.summarize(s)
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
                row, env = timing.run_in_subprocess(_depth_case_with_env, *args)
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


def run(cfg: ConfigDict, out_dir: Path, opts: RunOptions) -> None:
    """Runs the depth sweep of ``cfg`` unless ``out_dir/depth_sweep.json`` exists."""
    if not opts.force and (out_dir / "depth_sweep.json").exists():
        path = out_dir / "depth_sweep.json"
        check_config(path, read_json(path), to_dict(cfg))  # another config's results refuse
        print(f"[skip] {out_dir / 'depth_sweep.json'} exists (FORCE=1 / --force reruns it)")
        return
    path = run_depth_sweep(to_dict(cfg), out_dir, isolate=bool(cfg.isolate))
    print(f"wrote {path}")
