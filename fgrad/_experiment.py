"""Running an experiment config, and the command line every experiment script shares.

An experiment script holds only ``get_config(preset)`` (its docstring says how to run it) and
calls :func:`experiment_cli`; experiments differ by config, not by code. Config ``kind``:

* ``"test_functions"``: Beale/Rosenbrock trajectories (:mod:`fgrad._trajectories`).
* ``"mnist"``: train ``model`` with each method × learning rate × seed (:mod:`fgrad._train`).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fgrad._results import ResultsError, is_done
from fgrad._schedules import OPTIMIZERS, check_learning_rate
from fgrad._sources import METHODS
from fgrad._tangents import DISTRIBUTIONS
from fgrad._xla_flags import configure_xla_flags

PRESETS = ("cpu", "paper")
KINDS = ("test_functions", "mnist", "estimator_quality", "depth_sweep")
Config = dict[str, Any]


def mnist_defaults() -> Config:
    """The paper's MNIST protocol, shared by every MNIST experiment config.

    Both methods, batch 64, plain SGD with η_i = η₀·e^(−ik), k = 1e-4, one normal tangent per
    step, steps per compiled call chosen by measurement for the model and backend.
    """
    return {"kind": "mnist", "methods": ["forward", "backprop"], "model_kwargs": {},
            "batch_size": 64, "decay": 1e-4, "optimizer": "sgd", "num_tangents": 1,
            "distribution": "normal", "steps_per_call": None}


def run_name(variant: str, learning_rate: float, seed: int) -> str:
    """File stem of one MNIST run, e.g. ``forward_lr0.0002_seed0``."""
    return f"{variant}_lr{learning_rate:g}_seed{seed}"


def variants(cfg: Config) -> list[Config]:
    """The config's variants: ``cfg["variants"]`` (each a dict with ``name``, ``method`` and any
    config overrides, e.g. ``num_tangents``, ``optimizer``, ``learning_rates``), or else one
    variant per entry of ``cfg["methods"]``, named after the method."""
    return cfg.get("variants") or [{"name": m, "method": m} for m in cfg["methods"]]


def mnist_runs(cfg: Config) -> list[tuple[Config, float, int, str]]:
    """(run config, learning rate, seed, name) of every run of an MNIST config, in run order.

    The run config is ``cfg`` with the variant's overrides applied and ``variant``/``method``
    set. Learning rates come from the variant if it has its own, else from ``cfg``.
    """
    runs = []
    for v in variants(cfg):
        run_cfg = {k: val for k, val in cfg.items() if k != "variants"}
        run_cfg.update({k: val for k, val in v.items() if k != "name"}, variant=v["name"])
        for lr in run_cfg["learning_rates"]:
            for seed in run_cfg["seeds"]:
                runs.append((run_cfg, lr, seed, run_name(v["name"], lr, seed)))
    return runs


def run_experiment(cfg: Config, out_dir: str | Path, force: bool = False,
                   mnist_dir: str | None = None) -> Path:
    """Runs every part of ``cfg`` not already complete in ``out_dir``.

    Args:
      cfg: an experiment config (from an experiment script's ``get_config``).
      out_dir: where its results go.
      force: rerun parts whose results are complete.
      mnist_dir: directory of the MNIST IDX files (None: ``FGRAD_MNIST_DIR``, else TFDS).

    Returns:
      ``out_dir``.
    """
    check_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg["kind"] == "test_functions":
        from fgrad._trajectories import run_test_functions
        run_test_functions(cfg, out_dir, force)
        return out_dir
    if cfg["kind"] == "depth_sweep":
        from fgrad._bench import run_depth_sweep
        if not force and (out_dir / "depth_sweep.json").exists():
            print(f"[skip] {out_dir / 'depth_sweep.json'} exists (FORCE=1 / --force reruns it)")
        else:
            run_depth_sweep(cfg, out_dir)
        return out_dir
    if cfg["kind"] == "estimator_quality":
        from fgrad._quality import run_estimator_quality
        run_estimator_quality(cfg, out_dir, force, mnist_dir)
        return out_dir
    from fgrad._mnist import load_mnist
    from fgrad._train import train_run
    todo, runs = [], mnist_runs(cfg)
    names = {f"{run[3]}.json" for run in runs}
    for stale in sorted(p.name for p in out_dir.glob("*.json") if p.name not in names):
        print(f"[stale] {out_dir / stale} is not a run of this config, but figures and the "
              "report still read it: delete it (and its .jsonl) if it is not wanted")
    for run in runs:
        if force or not is_done(out_dir / f"{run[3]}.json", run[0]):
            todo.append(run)
        else:
            print(f"[skip] {out_dir / run[3]} is complete (FORCE=1 / --force reruns it)")
    if not todo:
        return out_dir
    data = load_mnist(mnist_dir)
    for run_cfg, lr, seed, name in todo:
        s = train_run(run_cfg, data, run_cfg["method"], lr, seed, out_dir, name)
        ev = s.get("final_eval") or {}
        print(f"{cfg['name']}/{name}: {s['status']}, {s['steps_done']} steps, "
              f"{s['ms_per_step'] or float('nan'):.2f} ms/step, train loss "
              f"{s['final_train_loss'] or float('nan'):.4f}, test acc "
              f"{ev.get('test_acc', float('nan')):.4f}", flush=True)
    return out_dir


def check_config(cfg: Config) -> None:
    """One-line ValueErrors for configs that cannot run."""
    if cfg.get("kind") not in KINDS:
        raise ValueError(f"config {cfg.get('name')!r} has unknown kind {cfg.get('kind')!r}: "
                         f"use one of {', '.join(KINDS)}")
    if cfg["kind"] in ("estimator_quality", "depth_sweep"):
        return
    if cfg["kind"] == "test_functions":
        methods = cfg["methods"]
        lrs = [f["learning_rate"] for f in cfg["functions"].values()]
    else:
        methods = [v["method"] for v in variants(cfg)]
        lrs = [lr for _, lr, _, _ in mnist_runs(cfg)]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}: use one of {', '.join(METHODS)}")
    for lr in lrs:
        check_learning_rate(lr)


def _overrides(cfg: Config, args: argparse.Namespace) -> Config:
    cfg = copy.deepcopy(cfg)
    per_fn = cfg["kind"] == "test_functions"
    if args.steps is not None:
        if per_fn:
            for f in cfg["functions"].values():
                f["steps"] = args.steps
        else:
            cfg["steps"] = args.steps
    if args.lr is not None:
        if per_fn:
            for f in cfg["functions"].values():
                f["learning_rate"] = args.lr[0]
        else:
            cfg["learning_rates"] = args.lr
    if args.seeds is not None:
        cfg["seeds"] = args.seeds if per_fn else list(range(args.seeds))
    if args.method is not None:
        cfg["methods"] = [args.method]
        cfg["variants"] = [v for v in variants(cfg) if v["method"] == args.method]
    for key in ("batch_size", "steps_per_call", "num_tangents", "distribution", "eval_every",
                "chunk", "optimizer", "data_parallel"):
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def add_common_arguments(p: argparse.ArgumentParser, default_out: str) -> None:
    """The options every entry point shares: --preset, --out, --force, --mnist-dir."""
    p.add_argument("--preset", default="cpu", choices=PRESETS,
                   help="cpu: short runs for a 2-core CPU; paper: the paper's settings")
    p.add_argument("--out", help=f"results directory (default {default_out})")
    p.add_argument("--force", action="store_true", help="rerun runs whose results are complete")
    p.add_argument("--mnist-dir", help="directory of the four MNIST IDX files (default: "
                   "$FGRAD_MNIST_DIR, else download with TFDS)")


def experiment_cli(get_config: Callable[[str], Config], doc: str | None = None,
                   argv: list[str] | None = None) -> int:
    """The command line of an experiment script: preset, overrides, output directory.

    Args:
      get_config: the script's ``get_config(preset)``.
      doc: the script's docstring (shown by ``--help``).
      argv: arguments (default ``sys.argv[1:]``).

    Returns:
      The exit status (0, or 2 after printing a one-line error).
    """
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "results/<preset>/<experiment>")
    p.add_argument("--steps", type=int, help="training steps (iterations) per run")
    p.add_argument("--lr", type=float, nargs="+", help="learning rate(s) η₀")
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    p.add_argument("--method", choices=METHODS, help="only this method")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--steps-per-call", dest="steps_per_call", type=int,
                   help="training steps per compiled call (default: measured per model/backend)")
    p.add_argument("--num-tangents", dest="num_tangents", type=int, help="K tangents per step")
    p.add_argument("--distribution", choices=DISTRIBUTIONS)
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS))
    p.add_argument("--eval-every", dest="eval_every", type=int)
    p.add_argument("--data-parallel", dest="data_parallel", type=int, metavar="N",
                   help="split each batch over N devices (all hosts' devices when launched on "
                   "several hosts, see fgrad._parallel.init_distributed)")
    args = p.parse_args(argv)
    configure_xla_flags()  # the flags the benchmark chose (fgrad/_xla_flags.py), before JAX runs
    try:
        cfg = _overrides(get_config(args.preset), args)
        out = Path(args.out or Path("results") / args.preset / cfg["name"])
        if cfg.get("data_parallel") is not None:  # joins a multi-host job if the env says so
            from fgrad._parallel import init_distributed
            init_distributed()
        t0 = time.perf_counter()
        run_experiment(cfg, out, force=args.force, mnist_dir=args.mnist_dir)
    except (ValueError, TypeError, ResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: what was logged so far is in {out}", file=sys.stderr)
        return 130
    print(f"{cfg['name']}: done in {time.perf_counter() - t0:.1f} s; results in {out}")
    return 0
