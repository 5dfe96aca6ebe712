"""Optimisation trajectories on 2-D test functions (paper Figure 2, ``test_functions.py``).

For each function, method and seed, the optimiser runs jit-compiled in ``lax.scan`` chunks;
f(x) and x are recorded at every iteration and the cumulative wall time at chunk boundaries
(after ``block_until_ready``). Compilation is done ahead of time and timed apart, and one
untimed warm-up call precedes the timed ones.
Per (function, method) the arrays go to ``NAME.npz`` and the summary to ``NAME.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from fgrad._env import environment
from fgrad._functions import FUNCTIONS
from fgrad._results import is_done, write_error, write_json
from fgrad._schedules import check_learning_rate
from fgrad._tangents import sample_tangents
from fgrad.lab.build import build_optimizer
from fgrad.lab.config import to_dict
from fgrad.lab.run import RunOptions
from fgrad.train.step import source_value


def _chunk_fn(fun, tx, length):
    def body(carry, _):
        x, state = carry
        updates, state = tx.update(x, state, x, value_fn=fun)
        return (optax.apply_updates(x, updates), state), (source_value(state), x)

    return jax.jit(lambda carry: jax.lax.scan(body, carry, length=length), donate_argnums=0)


def sample_us_per_step(x0: jax.Array, cfg: dict[str, Any], steps: int, reps: int = 5) -> float:
    """µs per iteration of the forward gradient's random draw alone (a key split and a tangent
    per iteration, in a scan of ``steps`` like the optimiser's), median of ``reps`` timed calls
    after a warm-up: the part of a forward-gradient iteration that backprop does not have.

    Args:
      x0: the start point (the tangent's shape).
      cfg: the experiment config (``num_tangents``, ``distribution``).
      steps: iterations per call.
      reps: timed calls.

    Returns:
      The median µs per iteration.
    """
    k, dist = int(cfg.get("num_tangents", 1)), cfg.get("distribution", "normal")

    def body(key, _):
        key, sub = jax.random.split(key)
        return key, sample_tangents(sub, x0, k, dist).sum()

    draw = jax.jit(lambda key: jax.lax.scan(body, key, length=steps))
    key = jax.random.key(0)
    jax.block_until_ready(draw(key))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(draw(key))
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times)) / steps


def run_trajectories(fn_name: str, method: str, fn_cfg: dict[str, Any], cfg: dict[str, Any]
                     ) -> dict[str, Any]:
    """Runs every seed of one (function, method); returns arrays and timings.

    Args:
      fn_name: ``"beale"`` or ``"rosenbrock"``.
      method: ``"forward"`` or ``"backprop"``.
      fn_cfg: ``start``, ``learning_rate``, ``steps`` for this function.
      cfg: the experiment config (``seeds``, ``chunk``, ``decay`` and estimator options).

    Returns:
      ``f`` (seeds, steps+1), ``x`` (seeds, steps+1, 2), ``time`` (seeds, chunks+1) cumulative
      seconds at ``time_steps``, and ``compile_s`` per seed.
    """
    if fn_name not in FUNCTIONS:
        raise ValueError(f"unknown test function {fn_name!r}: use one of {', '.join(FUNCTIONS)}")
    fun = FUNCTIONS[fn_name]
    steps, chunk = int(fn_cfg["steps"]), int(cfg["chunk"])
    if steps % chunk:
        raise ValueError(f"{fn_name}: steps ({steps}) must be a multiple of chunk ({chunk})")
    x0 = jnp.asarray(fn_cfg["start"], jnp.float32)
    fs, xs, times, compile_s = [], [], [], []
    for seed in range(int(cfg["seeds"])):
        tx = build_optimizer(method, fn_cfg["learning_rate"], seed, cfg)
        carry = (jnp.array(x0, copy=True), tx.init(x0))  # the call donates its input
        t0 = time.perf_counter()
        run = _chunk_fn(fun, tx, chunk).lower(carry).compile()
        compile_s.append(time.perf_counter() - t0)
        # One untimed call on a fresh copy first: a compiled function's first call pays one-off
        # costs (it was most of backprop's first 250-iteration chunk on Beale), which would
        # otherwise sit inside the timed region.
        jax.block_until_ready(run((jnp.array(x0, copy=True), tx.init(x0))))
        f_seed, x_seed, t_seed, elapsed = [], [], [0.0], 0.0
        for _ in range(steps // chunk):
            t0 = time.perf_counter()
            carry, (fv, xv) = run(carry)
            jax.block_until_ready((carry, fv, xv))
            elapsed += time.perf_counter() - t0
            t_seed.append(elapsed)
            f_seed.append(np.asarray(fv))
            x_seed.append(np.asarray(xv))
        x_last = np.asarray(carry[0])
        fs.append(np.concatenate([*f_seed, [float(fun(carry[0]))]]))
        xs.append(np.concatenate([*x_seed, x_last[None]]))
        times.append(t_seed)
    return {"f": np.stack(fs).astype(np.float32), "x": np.stack(xs).astype(np.float32),
            "time": np.asarray(times), "time_steps": np.arange(0, steps + 1, chunk),
            "compile_s": np.asarray(compile_s)}


def run(cfg: ConfigDict, out_dir: Path, opts: RunOptions) -> None:
    """Runs the whole test-function experiment of ``cfg`` into ``out_dir``; skips finished parts."""
    cfg, force = to_dict(cfg), opts.force
    for fn_cfg in cfg["functions"].values():
        check_learning_rate(fn_cfg["learning_rate"])
    todo = []  # every part checked first: results of another config refuse before any run
    for fn_name, fn_cfg in cfg["functions"].items():
        for method in cfg["methods"]:
            name, part_cfg = f"{fn_name}_{method}", {**cfg, "functions": {fn_name: fn_cfg}}
            if not force and is_done(out_dir / f"{name}.json", part_cfg):
                print(f"[skip] {out_dir / name} is complete (FORCE=1 / --force reruns it)")
            else:
                todo.append((fn_name, fn_cfg, method, name, part_cfg))
    env = environment() if todo else None
    for fn_name, fn_cfg, method, name, part_cfg in todo:
        res = run_trajectories(fn_name, method, fn_cfg, cfg)
        try:
            np.savez_compressed(out_dir / f"{name}.npz", f=res["f"], x=res["x"],
                                time=res["time"], time_steps=res["time_steps"])
        except OSError as e:
            raise write_error(out_dir / f"{name}.npz", e) from None
        final = res["f"][:, -1].astype(np.float64)
        # Diverged: f(x) non-finite at some iteration of some seed (as the MNIST loop's test).
        bad = ~np.isfinite(res["f"])
        diverged = int(np.flatnonzero(bad.any(axis=0))[0]) if bad.any() else None
        summary = {
            "experiment": cfg["name"], "function": fn_name, "method": method,
            "status": "complete" if diverged is None else "diverged",
            "diverged_step": diverged, "steps_done": fn_cfg["steps"],
            "steps": fn_cfg["steps"], "config": part_cfg,
            "seeds": list(range(int(cfg["seeds"]))), "env": env,
            "final_f_mean": final.mean(), "final_f_std": final.std(),
            "final_f": final, "run_time_s_mean": res["time"][:, -1].mean(),
            "compile_s_mean": res["compile_s"].mean(),
            "us_per_step": 1e6 * res["time"][:, -1].mean() / fn_cfg["steps"],
            "sample_us_per_step": (sample_us_per_step(jnp.asarray(fn_cfg["start"], jnp.float32),
                                                      cfg, int(cfg["chunk"]))
                                   if method == "forward" else None),
        }
        write_json(out_dir / f"{name}.json", summary)
        if diverged is not None:
            print(f"{name}: f(x) became non-finite at iteration {diverged} in "
                  f"{int(bad.any(axis=1).sum())} of {len(final)} seeds: diverged (try a smaller "
                  "learning rate)", file=sys.stderr)
            continue
        print(f"{name}: final f = {final.mean():.4g} ± {final.std():.2g} over "
              f"{len(final)} seeds, {summary['us_per_step']:.1f} µs/step, "
              f"compile {summary['compile_s_mean']:.2f} s")
