"""MNIST experiments: train ``model`` with each variant × learning rate × seed of a config.

One run = one (variant, η₀, seed): built once from the config (:mod:`fgrad.lab.build`), trained
by :func:`fgrad.train.loop.train_loop`, logged to ``NAME.jsonl`` (one JSON line per step) with
its summary in ``NAME.json``. Runs are checkpointed every ``checkpoint_every`` steps and when
interrupted (:mod:`fgrad.train.checkpoint`, in ``OUT/.ckpt/NAME``); rerunning the same command
continues from the last checkpoint, bit-identically, and the checkpoint is removed once the
run is complete.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from fgrad._env import environment
from fgrad._memory import compiled_memory, device_peak_bytes, process_peak_rss_bytes
from fgrad._mnist import Mnist, load_mnist, scale_inputs
from fgrad._results import (
    JsonlWriter,
    best_learning_rate,
    config_changes,
    is_done,
    read_json,
    write_json,
)
from fgrad._schedules import check_learning_rate
from fgrad.lab.build import METHODS, build_model, build_optimizer, build_state, make_source
from fgrad.lab.build import steps_per_call as choose_steps_per_call
from fgrad.lab.config import defaults, mnist_runs, run_name, to_dict, variants
from fgrad.lab.run import RunOptions
from fgrad.lab.timing import loss_ms
from fgrad.train.checkpoint import CheckpointMismatch, RunCheckpointer, config_fingerprint
from fgrad.train.loop import Position, train_loop
from fgrad.train.parallel import data_mesh, make_data_parallel_step, replicate
from fgrad.train.step import (
    Data,
    data_bytes,
    epoch_permutations,
    make_diagnostics_fn,
    make_eval_fn,
    make_multi_step,
    make_train_step,
)

# Options added later count as made with these defaults, except the two that changed what
# every run computes: runs made before ``inputs`` and ``init`` existed trained on x/255 pixels
# with the model's own init_scheme (Flax's unless model_kwargs set it).
MNIST_DEFAULTS = {**to_dict(defaults("mnist")), "inputs": "unit", "init": "flax"}
CHECKPOINTS = ".ckpt"  # OUT/.ckpt/NAME: a run's mid-run checkpoints (git-ignored)


def _started_config(summary_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The config a checkpoint of this run was made under: the unfinished run's own (from its
    summary) when it differs from ``config`` only by options added since, at their defaults, so
    a code update that adds an option does not orphan a long run's checkpoint; else ``config``."""
    try:
        old = json.loads(summary_path.read_text()).get("config")
    except (OSError, ValueError):
        return config
    if isinstance(old, dict) and not config_changes(old, config, defaults=MNIST_DEFAULTS):
        return old
    return config

def check(cfg: Mapping[str, Any]) -> None:
    """One-line ValueErrors for an MNIST config that cannot run (methods, learning rates)."""
    for v in variants(cfg):
        if v["method"] not in METHODS:
            raise ValueError(f"unknown method {v['method']!r}: use one of {', '.join(METHODS)}")
    for _, lr, _, _ in mnist_runs(cfg):
        check_learning_rate(lr)


def best_rate_runs(cfg: Mapping[str, Any], out_dir: Path) -> list[tuple]:
    """The runs of ``cfg.best_rate_seeds``: each variant's extra seeds at the rate its sweep
    (``cfg.seeds`` over its learning rates) found best (:func:`fgrad._results.
    best_learning_rate`); none for a variant whose sweep is not complete in ``out_dir`` yet."""
    extra = [int(s) for s in cfg.get("best_rate_seeds") or []]
    by_variant: dict[str, list[tuple]] = {}
    for run in mnist_runs(cfg) if extra else []:
        by_variant.setdefault(run[0]["variant"], []).append(run)
    out = []
    for variant, runs in by_variant.items():
        summaries = [read_json(p) for *_, name in runs
                     if (p := out_dir / f"{name}.json").exists()]
        lr = best_learning_rate(summaries, [int(k) for k in runs[0][0]["seeds"]])
        out += [(runs[0][0], lr, k, run_name(variant, lr, k)) for k in extra
                if lr is not None and k not in runs[0][0]["seeds"]]
    return out


def run(cfg: ConfigDict, out_dir: Path, opts: RunOptions) -> None:
    """Trains every run of ``cfg`` not already complete in ``out_dir``, then the extra seeds at
    each variant's best rate (``best_rate_seeds``)."""
    check(cfg)
    runs = mnist_runs(cfg)
    names = {f"{run[3]}.json" for run in runs + best_rate_runs(cfg, out_dir)}
    for stale in sorted(p.name for p in out_dir.glob("*.json") if p.name not in names):
        print(f"[stale] {out_dir / stale} is not a run of this config, but figures and the "
              "report still read it: delete it (and its .jsonl) if it is not wanted")
    data: list[Mnist] = []  # loaded once, when a run needs it
    _train_all(cfg, runs, out_dir, opts, data)
    _train_all(cfg, best_rate_runs(cfg, out_dir), out_dir, opts, data)


def _train_all(cfg: ConfigDict, runs: list[tuple], out_dir: Path, opts: RunOptions,
               data: list[Mnist]) -> None:
    todo = []
    for run_cfg, lr, seed, name in runs:
        if opts.force or not is_done(out_dir / f"{name}.json", run_cfg, MNIST_DEFAULTS):
            todo.append((run_cfg, lr, seed, name))
        else:
            print(f"[skip] {out_dir / name} is complete (FORCE=1 / --force reruns it)")
    if todo and not data:
        data.append(load_mnist(opts.mnist_dir))
    for run_cfg, lr, seed, name in todo:
        if opts.force:  # a rerun from step 0, whatever checkpoint an earlier run left
            shutil.rmtree(out_dir / CHECKPOINTS / name, ignore_errors=True)
        s = train_run(run_cfg, data[0], run_cfg["method"], lr, seed, out_dir, name)
        ev = s.get("final_eval") or {}
        print(f"{cfg.name}/{name}: {s['status']}, {s['steps_done']} steps, "
              f"{s['ms_per_step'] or float('nan'):.2f} ms/step, train loss "
              f"{s['final_train_loss'] or float('nan'):.4f}, test acc "
              f"{ev.get('test_acc', float('nan')):.4f}", flush=True)


def _positive(cfg: Mapping[str, Any], key: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{key} must be an integer >= 1, got {value!r} (config "
                         f"{cfg.get('name')!r})")
    return int(value)


def _schedule(cfg: Mapping[str, Any], method: str) -> tuple[int, int, int, int, int]:
    """(steps, batch size, steps per call, eval every, diagnostics every), checked."""
    steps = _positive(cfg, "steps", cfg["steps"])
    batch_size = _positive(cfg, "batch_size", cfg["batch_size"])
    eval_every = _positive(cfg, "eval_every", cfg["eval_every"] or steps)
    diag_every = (int(cfg["diagnostics_every"] or 0) if method in ("forward", "activity")
                  else 0)
    chunk = choose_steps_per_call(cfg["model"], jax.default_backend(), cfg["steps_per_call"],
                                  steps, eval_every, diag_every)  # unset: one that fits them
    if steps % chunk or eval_every % chunk:
        raise ValueError(f"steps ({steps}) and eval_every ({eval_every}) must be multiples of "
                         f"steps_per_call ({chunk})")
    if diag_every % chunk:
        raise ValueError(f"diagnostics_every ({diag_every}) must be a multiple of "
                         f"steps_per_call ({chunk})")
    return steps, batch_size, chunk, eval_every, diag_every


def _progress(name: str, steps: int):
    """A progress bar on a terminal; without one, a line per evaluation (see the loop)."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm  # keeps `import fgrad` light

        bar = tqdm(total=steps, desc=name, leave=False)

        def update(pos: Position, loss: float) -> None:
            bar.n = pos.step
            bar.set_postfix(loss=f"{loss:.4f}")

        return update, bar.close
    return None, lambda: None


def _restore(ckpt: RunCheckpointer, state: Any, run: Path) -> tuple[Any, dict] | None:
    """(state, meta) of the run's checkpoint, or None to start from step 0: there is none, or
    it cannot be read (truncated or corrupted files: said in one line, and removed, so the run
    starts afresh rather than from damaged state). Another config's checkpoint still raises."""
    if ckpt.latest_step() is None:
        return None
    try:
        _, state, meta = ckpt.restore(state)
    except CheckpointMismatch:
        raise
    except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many kinds)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        print(f"[damaged] checkpoint {ckpt.directory} cannot be read ({type(e).__name__}: "
              f"{why}): {run} starts again from step 0", flush=True)
        ckpt.remove()
        return None
    if not isinstance(meta, dict) or "position" not in meta or "log_bytes" not in meta:
        print(f"[damaged] checkpoint {ckpt.directory} has no position: {run} starts again "
              "from step 0", flush=True)
        ckpt.remove()
        return None
    return state, meta


def train_run(cfg: Mapping[str, Any], data: Mnist, method: str, learning_rate: float,
              seed: int, out_dir: str | Path, name: str) -> dict[str, Any]:
    """Trains one (method, learning rate, seed) of a run config; logs to ``out_dir/name.*``.

    Args:
      cfg: the run config (:func:`fgrad.lab.config.mnist_runs`): model, steps, batch_size,
        decay, optimizer, eval_every, steps_per_call, checkpoint_every and estimator options.
      data: MNIST as host arrays, pixels in [0, 1] (scaled here by ``cfg["inputs"]``).
      method: ``"forward"`` or ``"backprop"``.
      learning_rate: η₀.
      seed: seeds the parameters, the data order and the tangents (both methods of a seed start
        from the same parameters and see the same batches).
      out_dir: results directory.
      name: the run's file stem.

    Returns:
      The run summary (also written to ``out_dir/name.json``).
    """
    out_dir = Path(out_dir)
    # A partial config gets the kind's defaults; a run config has no variants (mnist_runs).
    cfg = {k: v for k, v in {**to_dict(defaults("mnist")), **cfg}.items() if k != "variants"}
    steps, batch_size, chunk, eval_every, diag_every = _schedule(cfg, method)
    k_params, k_data = jax.random.split(jax.random.key(seed))
    model = build_model(cfg["model"], cfg["model_kwargs"], k_params, cfg["init"])
    data = scale_inputs(data, cfg["inputs"])
    # data_parallel: the global batch split over that many devices (fgrad.train.parallel).
    mesh = None if cfg["data_parallel"] is None else data_mesh(cfg["data_parallel"],
                                                                    batch_size)
    tx = build_optimizer(method, learning_rate, seed, cfg, data_parallel=mesh is not None)
    train = Data(jnp.asarray(data.train_images), jnp.asarray(data.train_labels),
                 epoch_permutations(k_data, data.train_images.shape[0], batch_size, steps))
    n_eval = int(cfg["eval_examples"] or data.test_images.shape[0])
    test_x, test_y = jnp.asarray(data.test_images[:n_eval]), jnp.asarray(data.test_labels[:n_eval])
    state = build_state(model, tx)
    if mesh is not None:
        state, train, test_x, test_y = replicate((state, train, test_x, test_y), mesh)
    train_step = (make_train_step(model.loss_fn, tx, batch_size) if mesh is None
                  else make_data_parallel_step(model.loss_fn, tx, batch_size, mesh))

    t0 = time.perf_counter()
    step_fn = jax.jit(make_multi_step(train_step, chunk),
                      donate_argnums=0).lower(state, train).compile()
    eval_fn = jax.jit(make_eval_fn(model.module, min(n_eval, 1000))).lower(
        state.params, test_x, test_y).compile()
    compile_s = time.perf_counter() - t0
    diag_fn = None
    if diag_every:  # compiled apart from the step, so the step never traces a backward pass
        diag_src = make_source(method, seed, {**cfg, "diagnostics": True})
        diag_fn = jax.jit(make_diagnostics_fn(model.loss_fn, diag_src, batch_size))

    summary: dict[str, Any] = {
        "experiment": cfg["name"], "model": cfg["model"], "method": method,
        "variant": cfg.get("variant", method),
        "learning_rate": learning_rate, "seed": seed, "status": "running", "steps": steps,
        "steps_done": 0, "num_params": model.num_params, "steps_per_call": chunk,
        "compile_s": compile_s, "config": dict(cfg), "env": environment(),
        "memory": {"step_xla": compiled_memory(step_fn),
                   # the on-device training set (images, labels, permutations): a step argument
                   "data_bytes": data_bytes(train)},
    }
    summary_path = out_dir / f"{name}.json"
    ckpt = RunCheckpointer(out_dir / CHECKPOINTS / name, config_fingerprint(
        {**_started_config(summary_path, summary["config"]), "method": method,
         "learning_rate": learning_rate, "seed": seed}))
    start, resume_at = None, None
    restored = _restore(ckpt, state, out_dir / name)
    if restored is not None:
        state, meta = restored
        start, resume_at = Position.from_json(meta["position"]), int(meta["log_bytes"])
        summary.update(resumed_from=start.step, resumes=int(meta.get("resumes", 0)) + 1)
        print(f"[resume] {out_dir / name} from step {start.step}", flush=True)
    write_json(summary_path, summary)

    def evaluate(st, step: int, elapsed: float) -> dict[str, Any]:
        loss, acc = jax.device_get(eval_fn(st.params, test_x, test_y))
        return {"kind": "eval", "step": step, "time": elapsed, "test_loss": float(loss),
                "test_acc": float(acc), "param_norm": float(optax.tree.norm(st.params))}

    def on_eval(pos: Position) -> None:
        summary.update(steps_done=pos.step, train_time_s=pos.time)
        write_json(summary_path, summary)
        if update is None:  # no terminal: one line per evaluation
            print(f"{cfg['name']}/{name}: step {pos.step}/{steps}, loss "
                  f"{np.mean(pos.recent):.4f} (mean of the last {len(pos.recent)}), "
                  f"{pos.time:.1f} s", flush=True)

    update, close = _progress(name, steps)
    result, pos = None, start or Position()
    try:
        with JsonlWriter(out_dir / f"{name}.jsonl", resume_at) as log:
            def save(st, p: Position) -> None:
                ckpt.save(p.step, st, {"position": p.to_json(), "log_bytes": log.tell(),
                                       "resumes": summary.get("resumes", 0)})

            result = train_loop(
                step_fn, state, train, steps=steps, steps_per_call=chunk, log=log,
                evaluate=evaluate, eval_every=eval_every,
                divergence_factor=float(cfg["divergence_factor"]),
                diagnose=diag_fn, diag_every=diag_every, start=pos, on_eval=on_eval,
                checkpoint=save, checkpoint_every=int(cfg["checkpoint_every"]),
                progress=update)
    finally:
        close()
        if result is None:
            summary["status"] = "incomplete"
        summary.update(steps_done=pos.step, train_time_s=pos.time,
                       ms_per_step=1e3 * pos.time / pos.step if pos.step else None,
                       final_train_loss=float(np.mean(pos.recent)) if pos.recent else None)
        summary["memory"].update(process_peak_rss=process_peak_rss_bytes(),
                                 device_peak=device_peak_bytes())
        write_json(summary_path, summary)
    if result.status == "diverged":
        summary.update(diverged_step=result.diverged_step)
        print(f"{name}: training loss diverged at step {result.diverged_step} (try a smaller "
              "learning rate); going on with the next run", file=sys.stderr)
    else:
        summary["final_eval"] = result.final_eval
        # T(f) as the steps are run: chunk evaluations per compiled call, each on a minibatch
        # gathered from the training data
        summary["f_timing"] = loss_ms(model.loss_fn, result.state.params, train, batch_size,
                                      chunk)
        summary["f_ms"] = summary["f_timing"]["ms"]
    summary["status"] = result.status  # written last: a run is complete only when it is
    write_json(summary_path, summary)
    shutil.rmtree(ckpt.directory, ignore_errors=True)
    return summary
