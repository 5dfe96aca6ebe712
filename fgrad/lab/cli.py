"""The one command line: ``python -m fgrad`` (and every ``experiments/<name>.py``).

  python -m fgrad                              # list the experiments
  python -m fgrad run mlp --preset cpu         # one experiment (= python experiments/mlp.py)
  python -m fgrad run mlp --steps 100 --out /tmp/mlp      # overrides need their own --out
  python -m fgrad run mlp --config.model_kwargs.width=256 --out /tmp/w256
  python -m fgrad reproduce --preset cpu       # make reproduce

Every key of an experiment's config can be overridden: ``--config.KEY=VALUE`` for any (dotted)
key, or ``--KEY VALUE...`` for a top-level key (dashes for underscores: ``--batch-size 128``,
``--learning-rates 1e-3 3e-3``). Aliases: ``--lr`` (``learning_rates``), ``--seeds N`` (seeds
0..N−1), ``--method M`` (only that method's runs). ``run NAME --help`` lists every key with its
default. Errors are one line on stderr with exit status 2, and come before anything is loaded
where they can (numbers, the --out folder, results of another config in it, which are never
overwritten without --force); an interrupted run exits 130 (SIGINT) or 143 (SIGTERM) after
saving what it had.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ml_collections import ConfigDict

from fgrad._results import ResultsError
from fgrad._xla_flags import configure_xla_flags
from fgrad.lab import registry
from fgrad.lab.config import check, override, parse_value, variants
from fgrad.lab.run import RunOptions
from fgrad.train.loop import Interrupted

_ALIASES = ("lr", "seeds", "method")
# Help for keys whose values constrain each other (the rest show their default only).
_RULES = {
    "steps_per_call": "steps per compiled call; steps, eval_every and diagnostics_every must "
                      "be multiples of it (unset: the model's measured default, lowered to the "
                      "largest divisor of their gcd)",
    "eval_every": "steps between evaluations (unset: steps); a multiple of steps_per_call",
    "diagnostics_every": "steps between estimator diagnostics (0: none); a multiple of "
                         "steps_per_call",
    "chunk": "iterations per compiled call; every function's steps must be a multiple of it",
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one-line ValueErrors (exit 2 via :func:`main`)."""

    def error(self, message: str):
        raise ValueError(f"{message} ({self.prog} --help lists the options)")


def _common(p: argparse.ArgumentParser, presets: Sequence[str], default_out: str) -> None:
    p.add_argument("--preset", default=presets[0], choices=presets,
                   help=f"the experiment's preset (default {presets[0]})")
    p.add_argument("--out", help=f"results folder (default {default_out})")
    p.add_argument("--force", action="store_true",
                   help="rerun runs whose results are complete, and overwrite results "
                   "made with another config (without it those refuse)")
    p.add_argument("--mnist-dir", help="directory of the four MNIST IDX files (default: "
                   "$FGRAD_MNIST_DIR, else download with TFDS)")


def _key_flags(p: argparse.ArgumentParser, cfg: ConfigDict) -> None:
    """``--KEY VALUE`` for every top-level key of ``cfg`` (lists take several values)."""
    g = p.add_argument_group("config keys (defaults of the chosen preset)")
    for key in sorted(cfg):
        value = cfg[key]
        if isinstance(value, ConfigDict) or key in ("name", "kind") or key in _ALIASES:
            continue
        rule = f"{_RULES[key]}; " if key in _RULES else ""
        g.add_argument(f"--{key.replace('_', '-')}", dest=f"key:{key}", type=parse_value,
                       nargs="+" if isinstance(value, list) else None, metavar="V",
                       help=f"{rule}default {value!r}")
    if "learning_rates" in cfg:
        g.add_argument("--lr", dest="key:learning_rates", type=float, nargs="+",
                       help="alias of --learning-rates")
    if "seeds" in cfg:
        g.add_argument("--seeds", dest="alias:seeds", type=int, metavar="N",
                       help=f"seeds 0..N-1 (default {cfg.seeds!r})")
    if "methods" in cfg:
        g.add_argument("--method", dest="alias:method", help="only this method's runs")
    functions = cfg.get("functions") or {}
    if "steps" not in cfg and functions and all("steps" in f for f in functions.values()):
        g.add_argument("--steps", dest="alias:steps", type=int, metavar="N",
                       help="every function's steps (default "
                       f"{', '.join(f'{k} {f.steps}' for k, f in functions.items())}); a "
                       "multiple of chunk")


def _apply(cfg: ConfigDict, args: argparse.Namespace, dotted: list[str]) -> bool:
    """Applies the command line's overrides to ``cfg``; returns whether there were any."""
    changed = False
    for dest, value in vars(args).items():
        if value is None or ":" not in dest:
            continue
        kind, key = dest.split(":", 1)
        changed = True
        if kind == "key":
            override(cfg, key, value)
        elif key == "seeds":
            if value < 1:
                raise ValueError(f"--seeds N runs seeds 0..N-1, so N must be >= 1, got {value}:"
                                 " pass --seeds 1 or more")
            override(cfg, "seeds", list(range(value)) if isinstance(cfg.seeds, list) else value)
        elif key == "steps":  # test functions: every function's steps
            if value < 1:
                raise ValueError(f"--steps N sets every function's steps, so N must be >= 1, "
                                 f"got {value}: pass --steps 1 or more")
            for fn in cfg.functions:
                override(cfg, f"functions.{fn}.steps", value)
        elif key == "method":
            cfg.methods = [value]
            cfg.variants = [v for v in variants(cfg) if v["method"] == value] \
                if cfg.variants else []
    for item in dotted:
        key, sep, value = item[len("--config."):].partition("=")
        if not sep:
            raise ValueError(f"{item}: write --config.KEY=VALUE")
        override(cfg, key, parse_value(value))
        changed = True
    return changed


def _in_finalizer(frame) -> bool:
    """Whether ``frame`` runs inside a gc callback (JAX registers one) or a ``__del__``, where
    Python prints an exception raised and drops it ("Exception ignored in ...")."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _raise_on_signals() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (outside the training loop, which installs
    its own handlers); one that lands in a finalizer is delivered again 50 ms later."""
    def handler(signum, frame):
        if _in_finalizer(frame):
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def writable_dir(out: Path) -> None:
    """Makes ``out`` (and its parents) if missing and checks a file can be written in it.

    Raises:
      ResultsError: one line, ``cannot write results to OUT: <reason>; choose another --out``.
    """
    reason = None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        reason = "it is a file, not a folder"
    except NotADirectoryError as e:
        above = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        reason = f"{above} is a file, not a folder" if above else _reason(e)
    except OSError as e:
        reason = _reason(e)
    if reason is None and not out.is_dir():
        reason = "it is not a folder"
    if reason is None:
        try:
            fd, probe = tempfile.mkstemp(dir=out, prefix=".fgrad-write-check-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            reason = f"{_reason(e)} (a test file could not be written)"
    if reason is not None:
        raise ResultsError(f"cannot write results to {out}: {reason}; choose another --out")


def _fail(e: BaseException, out: Path | None) -> int:
    if isinstance(e, KeyboardInterrupt):
        signum = getattr(e, "signum", signal.SIGINT)
        where = f": what was logged so far is in {out}; rerun the same command to resume" \
            if out else "; rerun the same command to resume"
        print(f"interrupted ({signal.Signals(signum).name}){where}", file=sys.stderr)
        return 128 + signum
    print(f"error: {e}", file=sys.stderr)
    return 2


def run_main(name: str, argv: Sequence[str], prog: str | None = None) -> int:
    """``run NAME [options]``: one experiment with its preset and overrides."""
    exp = registry.get(name)
    p = _Parser(prog=prog or f"python -m fgrad run {name}", description=exp.doc,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, exp.presets, f"results/<preset>/{name}")
    pre = p.parse_known_args([a for a in argv if a not in ("-h", "--help")])[0]
    cfg = exp.config(pre.preset)
    _key_flags(p, cfg)
    args, rest = p.parse_known_args(argv)
    dotted = [a for a in rest if a.startswith("--config.")]
    if len(dotted) != len(rest):
        p.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in dotted)}")
    changed = _apply(cfg, args, dotted)
    check(cfg)  # the numbers, before anything is loaded (one line naming the flag)
    default_out = Path(cfg.results_dir or Path("results") / args.preset / name)
    if changed and args.out is None:
        raise ValueError(f"overrides change {name}'s config: pass --out DIR (the default "
                         f"{default_out} holds the preset's own results)")
    out = Path(args.out) if args.out else default_out
    writable_dir(out)  # before anything is loaded
    configure_xla_flags()  # the flags the benchmark chose (fgrad/_xla_flags.py), before JAX runs
    if cfg.get("data_parallel") is not None:  # joins a multi-host job if the env says so
        from fgrad.train.parallel import init_distributed
        init_distributed()
    t0 = time.perf_counter()
    try:
        registry.runner(cfg.kind)(cfg, out, RunOptions(args.force, args.mnist_dir))
    except KeyboardInterrupt as e:
        return _fail(e, out)
    print(f"{name}: done in {time.perf_counter() - t0:.1f} s; results in {out}")
    return 0


def reproduce_main(argv: Sequence[str]) -> int:
    """``reproduce [options]``: every experiment of the chosen groups, then figures + report."""
    from fgrad.lab.config import PRESETS
    from fgrad.lab.reproduce import GROUPS, REPORTED, reproduce, select

    p = _Parser(prog="python -m fgrad reproduce",
                description="Run the experiments of a group, then draw the figures and write "
                "REPORT.md.")
    _common(p, PRESETS, "results/<preset>")
    p.add_argument("--figures-only", action="store_true",
                   help="only redraw the figures and REPORT.md from the results files")
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these experiments")
    p.add_argument("--groups", nargs="+", default=list(GROUPS), choices=["paper", "beyond"],
                   help=f"experiment groups to run (default {' '.join(GROUPS)})")
    args = p.parse_args(argv)
    out = Path(args.out or Path("results") / args.preset)
    if args.figures_only and not out.is_dir():  # (reproduce checks the results inside)
        problem = "is not a folder" if out.exists() else "does not exist"
        raise ResultsError(f"--figures-only draws from results already in --out, but {out} "
                           f"{problem}: run the experiments first (python -m fgrad reproduce "
                           f"--preset {args.preset} --out {out}) or pass the --out that holds "
                           "them")
    names = select(args.only, args.preset, REPORTED if args.only else args.groups)
    writable_dir(out)  # before anything is loaded
    configure_xla_flags()
    command = shlex.join(["python", "-m", "fgrad", "reproduce", *argv])
    try:
        inv = reproduce(args.preset, out, names, args.force, args.figures_only, args.mnist_dir,
                        command)
    except KeyboardInterrupt as e:
        return _fail(e, out)
    print(f"reproduce: total wall time {inv['wall_time_s']:.1f} s")
    print(f"figures in {out / 'figures'}/, report in {inv['report']}")
    return 0


def list_main() -> int:
    """Lists the registered experiments."""
    print("experiments (python -m fgrad run NAME --help):")
    for e in registry.experiments().values():
        cfg = e.config(e.presets[0])
        print(f"  {e.name:18} {cfg.group:10} {cfg.kind:18} {e.summary}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fgrad [list | run NAME ... | reproduce ...]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _raise_on_signals()
    try:
        if not argv or argv[0] in ("list", "-h", "--help"):
            if argv and argv[0] != "list":
                print(__doc__)
            return list_main()
        if argv[0] == "run" and len(argv) >= 2:
            return run_main(argv[1], argv[2:], prog=f"python -m fgrad run {argv[1]}")
        if argv[0] == "reproduce":
            return reproduce_main(argv[1:])
        raise ValueError(f"unknown command {' '.join(argv[:2])!r}: use list, run NAME or "
                         "reproduce")
    except (ValueError, TypeError, ResultsError) as e:  # MnistError is a ValueError
        return _fail(e, None)
    except OSError as e:  # a file-system error no layer turned into a ResultsError
        where = f" {e.filename}" if e.filename else ""
        return _fail(ValueError(f"cannot access{where}: {_reason(e)}"), None)
    except KeyboardInterrupt as e:
        return _fail(e, None)


def script_main(path: str, argv: Sequence[str] | None = None) -> int:
    """What ``python experiments/<name>.py [options]`` runs: ``run <name> [options]``."""
    name = Path(path).stem
    return main(["run", name, *(sys.argv[1:] if argv is None else argv)])


def entry() -> None:
    """The ``fgrad`` console command (``pyproject.toml``): ``fgrad run mlp`` etc."""
    sys.exit(main())
