"""One training loop for every model and gradient source (MNIST experiments).

``train_step`` draws its minibatch on the device from precomputed per-epoch permutations, so
no host→device copy happens per step, and runs ``steps_per_call`` steps per compiled call
(a ``lax.scan`` when > 1). Wall time is read after ``block_until_ready`` at call boundaries,
with compilation done ahead of time and timed apart; evaluation time is excluded.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fgrad._env import environment
from fgrad._memory import compiled_memory, device_peak_bytes, process_peak_rss_bytes
from fgrad._mnist import Mnist
from fgrad._models import accuracy, cross_entropy_loss, init_params, make_model
from fgrad._parallel import DATA_AXIS, data_mesh, make_data_parallel_step, replicate
from fgrad._results import JsonlWriter, write_json
from fgrad._schedules import make_optimizer
from fgrad._sources import make_source

PyTree = Any

# Steps per compiled call, by (model, backend); chosen by measurement (experiments/bench.py,
# results/bench/cpu-amd-epyc-2c.md, "Loop style" table: every step method of a model timed one
# step per call from a Python loop and as a lax.scan, batch 64, XLA:CPU with fgrad's flags):
# * logreg: a scan of 50 is 1.6–2.7× faster per step than a Python loop (the ~50 µs dispatch
#   per call is larger than the step itself) → scan (the fallback).
# * mlp: a scan is 1.01–1.29× faster for every method → scan (the fallback).
# * cnn: the backprop step inside a scan is ~56× slower (9.7 s vs 0.17 s per step): inside
#   the while loop XLA:CPU gets the weight-gradient convolution in a layout (f01b_i01o->01bf)
#   its Eigen convolution does not take and falls back to a naive loop. f and the
#   forward-gradient steps are only 4–7 % faster in a scan, so one step per call keeps every
#   method within 1.2× of its fastest loop style.
# Other backends use the fallback (a scan amortises dispatch; not yet measured on GPU).
DEFAULT_STEPS_PER_CALL = {("cnn", "cpu"): 1}
FALLBACK_STEPS_PER_CALL = 50


class TrainState(NamedTuple):
    params: PyTree
    opt_state: optax.OptState
    step: jax.Array


class Data(NamedTuple):
    """Device-resident training data and the per-epoch permutations (epochs, N)."""

    images: jax.Array
    labels: jax.Array
    perms: jax.Array


def steps_per_call(model: str, backend: str, requested: int | None) -> int:
    """The configured steps per compiled call, or the measured default for (model, backend)."""
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {requested}")
        return int(requested)
    return DEFAULT_STEPS_PER_CALL.get((model, backend), FALLBACK_STEPS_PER_CALL)


def epoch_permutations(key: jax.Array, num_examples: int, batch_size: int, steps: int
                       ) -> jax.Array:
    """One random permutation of the training set per epoch needed for ``steps`` steps."""
    per_epoch = num_examples // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the training set "
                         f"({num_examples} examples)")
    epochs = max(1, math.ceil(steps / per_epoch))
    keys = jax.random.split(key, epochs)
    return jax.vmap(lambda k: jax.random.permutation(k, num_examples))(keys).astype(jnp.int32)


def batch_at(step: jax.Array, data: Data, batch_size: int,
             local_indices: Callable[[jax.Array], jax.Array] | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """The minibatch of training step ``step``: its slice of that epoch's permutation.

    ``local_indices`` (data parallelism, see :mod:`fgrad._parallel`) maps the step's
    ``batch_size`` example indices to the part this device evaluates; None: all of them.
    """
    per_epoch = data.perms.shape[1] // batch_size
    epoch, pos = step // per_epoch, (step % per_epoch) * batch_size
    idx = jax.lax.dynamic_slice(data.perms[epoch], (pos,), (batch_size,))
    if local_indices is not None:
        idx = local_indices(idx)
    return data.images[idx], data.labels[idx]


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformationExtraArgs,
                    batch_size: int, local_indices: Callable[[jax.Array], jax.Array] | None = None
                    ) -> Callable[[TrainState, Data], tuple[TrainState, jax.Array]]:
    """``train_step(state, data) -> (state, loss)``: one update on the step's minibatch
    (this device's part of it when ``local_indices`` is given, see :func:`batch_at`)."""

    def train_step(state: TrainState, data: Data):
        images, labels = batch_at(state.step, data, batch_size, local_indices)
        value_fn = lambda p: loss_fn(p, images, labels)
        updates, opt_state = tx.update(state.params, state.opt_state, state.params,
                                       value_fn=value_fn)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), opt_state[0].value

    return train_step


def make_diagnostics_fn(loss_fn: Callable, source: optax.GradientTransformationExtraArgs,
                        batch_size: int) -> Callable[[TrainState, Data], dict[str, jax.Array]]:
    """``diag(state, data)``: quality of the gradient estimate the next step will use.

    ``source`` is the run's forward-gradient source built with ``diagnostics=True``; applied to
    the run's own source state (same key, same batch) it reproduces the next step's estimate and
    compares it with the exact minibatch gradient (backprop, for the diagnostic only; the
    training step itself never computes it): cosine similarity, norm ratio ‖g‖/‖∇f‖ and the
    first directional derivative ∇f·v.
    """

    def diag(state: TrainState, data: Data):
        images, labels = batch_at(state.step, data, batch_size)
        _, src = source.update(state.params, state.opt_state[0], state.params,
                               value_fn=lambda p: loss_fn(p, images, labels))
        return {**src.diagnostics, "directional_derivative": src.directional_derivatives[0]}

    return diag


def make_multi_step(train_step: Callable, num_steps: int) -> Callable:
    """``num_steps`` train steps in one call, returning the (num_steps,) losses: a
    ``lax.scan``, or the plain step when ``num_steps`` is 1."""
    if num_steps > 1:
        return lambda state, data: jax.lax.scan(lambda s, _: train_step(s, data), state,
                                                length=num_steps)

    def one_step(state, data):
        state, loss = train_step(state, data)
        return state, loss[None]

    return one_step


def make_eval_fn(model, batch_size: int = 1000) -> Callable[[PyTree, jax.Array, jax.Array],
                                                            tuple[jax.Array, jax.Array]]:
    """``eval_fn(params, images, labels) -> (mean loss, accuracy)`` over a whole split,
    in batches of ``batch_size`` (the split's size must be a multiple of it)."""
    loss_fn, acc_fn = cross_entropy_loss(model), accuracy(model)

    def eval_fn(params, images, labels):
        n = images.shape[0]
        if n % batch_size:
            raise ValueError(f"evaluation split of {n} examples is not a multiple of "
                             f"{batch_size}")
        xb = images.reshape(n // batch_size, batch_size, *images.shape[1:])
        yb = labels.reshape(n // batch_size, batch_size)
        losses, accs = jax.lax.map(lambda b: (loss_fn(params, *b), acc_fn(params, *b)),
                                   (xb, yb))
        return jnp.mean(losses), jnp.mean(accs)

    return eval_fn


def median_call_ms(fn: Callable, *args, reps: int = 20) -> float:
    """Median wall time in ms of an already-compiled ``fn(*args)`` over ``reps`` calls."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def train_run(cfg: dict[str, Any], data: Mnist, method: str, learning_rate: float, seed: int,
              out_dir: str | Path, name: str) -> dict[str, Any]:
    """Trains one (method, learning rate, seed) of the config; logs to ``out_dir/name.*``.

    Args:
      cfg: the experiment config (model, steps, batch_size, decay, optimizer, eval_every,
        steps_per_call and estimator options).
      data: MNIST as host arrays.
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
    backend = jax.default_backend()
    steps, batch_size = int(cfg["steps"]), int(cfg["batch_size"])
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunk = steps_per_call(cfg["model"], backend, cfg.get("steps_per_call"))
    eval_every = int(cfg.get("eval_every") or steps)
    if steps % chunk or eval_every % chunk:
        raise ValueError(f"steps ({steps}) and eval_every ({eval_every}) must be multiples of "
                         f"steps_per_call ({chunk})")
    diag_every = int(cfg.get("diagnostics_every") or 0) if method == "forward" else 0
    if diag_every % chunk:
        raise ValueError(f"diagnostics_every ({diag_every}) must be a multiple of "
                         f"steps_per_call ({chunk})")

    model = make_model(cfg["model"], **cfg.get("model_kwargs", {}))
    k_params, k_data = jax.random.split(jax.random.key(seed))
    params = init_params(model, k_params)
    loss_fn = cross_entropy_loss(model)
    # data_parallel: the global batch split over that many devices (fgrad._parallel).
    mesh = None if cfg.get("data_parallel") is None else data_mesh(cfg["data_parallel"],
                                                                    batch_size)
    tx = make_optimizer(make_source(method, seed, cfg, None if mesh is None else DATA_AXIS),
                        learning_rate, decay=cfg["decay"], optimizer=cfg.get("optimizer", "sgd"))
    train = Data(jnp.asarray(data.train_images), jnp.asarray(data.train_labels),
                 epoch_permutations(k_data, data.train_images.shape[0], batch_size, steps))
    n_eval = int(cfg.get("eval_examples") or data.test_images.shape[0])
    test_x, test_y = jnp.asarray(data.test_images[:n_eval]), jnp.asarray(data.test_labels[:n_eval])
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    if mesh is not None:
        state, train, test_x, test_y = replicate((state, train, test_x, test_y), mesh)
    train_step = (make_train_step(loss_fn, tx, batch_size) if mesh is None
                  else make_data_parallel_step(loss_fn, tx, batch_size, mesh))

    t0 = time.perf_counter()
    step_fn = jax.jit(make_multi_step(train_step, chunk),
                      donate_argnums=0).lower(state, train).compile()
    eval_fn = jax.jit(make_eval_fn(model, min(n_eval, 1000))).lower(state.params, test_x,
                                                                    test_y).compile()
    compile_s = time.perf_counter() - t0
    if diag_every:  # compiled apart from the step, so the step never traces a backward pass
        diag_src = make_source(method, seed, {**cfg, "diagnostics": True})
        diag_fn = jax.jit(make_diagnostics_fn(loss_fn, diag_src, batch_size))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    summary: dict[str, Any] = {
        "experiment": cfg["name"], "model": cfg["model"], "method": method,
        "variant": cfg.get("variant", method),
        "learning_rate": learning_rate, "seed": seed, "status": "running", "steps": steps,
        "steps_done": 0, "num_params": n_params, "steps_per_call": chunk,
        "compile_s": compile_s, "config": cfg, "env": environment(),
        "memory": {"step_xla": compiled_memory(step_fn),
                   # the on-device training set (images, labels, permutations): a step argument
                   "data_bytes": sum(int(x.nbytes) for x in jax.tree.leaves(train))},
    }
    summary_path = out_dir / f"{name}.json"
    write_json(summary_path, summary)

    def evaluate(step, elapsed):
        loss, acc = jax.device_get(eval_fn(state.params, test_x, test_y))
        return {"kind": "eval", "step": step, "time": elapsed, "test_loss": float(loss),
                "test_acc": float(acc)}

    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    from tqdm.auto import tqdm  # keeps `import fgrad` light

    bar = tqdm(total=steps, desc=name, disable=not sys.stderr.isatty(), leave=False)
    elapsed, done, recent, first_loss = 0.0, 0, [], None
    # Diverged: a non-finite loss, or one `divergence_factor` times the first step's loss.
    limit = float(cfg.get("divergence_factor", 100.0))
    try:
        with JsonlWriter(out_dir / f"{name}.jsonl") as log:
            log.write(evaluate(0, 0.0))
            while done < steps:
                if diag_every and done % diag_every == 0:
                    log.write({"kind": "diag", "step": done + 1,
                               **jax.device_get(diag_fn(state, train))})
                t = time.perf_counter()
                state, losses = step_fn(state, train)
                jax.block_until_ready(losses)
                start, elapsed = elapsed, elapsed + time.perf_counter() - t
                losses = np.asarray(losses)  # the host copy after the clock stops
                # Inside one call, per-step times are interpolated between measured boundaries.
                times = start + (elapsed - start) * np.arange(1, chunk + 1) / chunk
                if first_loss is None:
                    first_loss = float(losses[0])
                bad = np.flatnonzero(~(np.abs(losses) <= limit * max(abs(first_loss), 1.0)))
                keep = losses if not bad.size else losses[: bad[0] + 1]
                log.write_many([{"kind": "train", "step": done + i + 1, "loss": float(v),
                                 "time": float(times[i])} for i, v in enumerate(keep)])
                done += len(keep)
                recent = (recent + keep.tolist())[-100:]
                if bad.size:
                    summary.update(status="diverged", diverged_step=done)
                    print(f"{name}: training loss became {keep[-1]:.4g} at step {done}: diverged "
                          "(try a smaller learning rate); going on with the next run",
                          file=sys.stderr)
                    break
                bar.update(chunk)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if done % eval_every == 0 or done == steps:
                    log.write(evaluate(done, elapsed))
                    summary.update(steps_done=done, train_time_s=elapsed)
                    write_json(summary_path, summary)
            else:
                summary["status"] = "complete"
                summary["final_eval"] = evaluate(done, elapsed)
    except KeyboardInterrupt:
        summary["status"] = "incomplete"
        raise
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, old_term)
        summary.update(steps_done=done, train_time_s=elapsed,
                       ms_per_step=1e3 * elapsed / done if done else None,
                       final_train_loss=float(np.mean(recent)) if recent else None)
        summary["memory"].update(process_peak_rss=process_peak_rss_bytes(),
                                 device_peak=device_peak_bytes())
        if summary["status"] == "running":
            summary["status"] = "incomplete"
        write_json(summary_path, summary)
    if summary["status"] == "complete":
        xb, yb = train.images[:batch_size], train.labels[:batch_size]
        f_jit = jax.jit(loss_fn)
        summary["f_ms"] = median_call_ms(f_jit, state.params, xb, yb)
        write_json(summary_path, summary)
    return summary
