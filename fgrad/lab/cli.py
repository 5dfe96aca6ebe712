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
default. Errors are one line on stderr with exit status 2; an interrupted run exits 130
(SIGINT) or 143 (SIGTERM) after saving what it had.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from fgrad._results import ResultsError
from fgrad._xla_flags import configure_xla_flags
from fgrad.lab import registry
from fgrad.lab.config import override, parse_value, variants
from fgrad.lab.run import RunOptions
from fgrad.train.loop import Interrupted

_ALIASES = ("lr", "seeds", "method")


def _common(p: argparse.ArgumentParser, presets: Sequence[str], default_out: str) -> None:
    p.add_argument("--preset", default=presets[0], choices=presets,
                   help=f"the experiment's preset (default {presets[0]})")
    p.add_argument("--out", help=f"results folder (default {default_out})")
    p.add_argument("--force", action="store_true",
                   help="rerun runs whose results are complete")
    p.add_argument("--mnist-dir", help="directory of the four MNIST IDX files (default: "
                   "$FGRAD_MNIST_DIR, else download with TFDS)")


def _key_flags(p: argparse.ArgumentParser, cfg: ConfigDict) -> None:
    """``--KEY VALUE`` for every top-level key of ``cfg`` (lists take several values)."""
    g = p.add_argument_group("config keys (defaults of the chosen preset)")
    for key in sorted(cfg):
        value = cfg[key]
        if isinstance(value, ConfigDict) or key in ("name", "kind") or key in _ALIASES:
            continue
        g.add_argument(f"--{key.replace('_', '-')}", dest=f"key:{key}", type=parse_value,
                       nargs="+" if isinstance(value, list) else None, metavar="V",
                       help=f"default {value!r}")
    if "learning_rates" in cfg:
        g.add_argument("--lr", dest="key:learning_rates", type=float, nargs="+",
                       help="alias of --learning-rates")
    if "seeds" in cfg:
        g.add_argument("--seeds", dest="alias:seeds", type=int, metavar="N",
                       help=f"seeds 0..N-1 (default {cfg.seeds!r})")
    if "methods" in cfg:
        g.add_argument("--method", dest="alias:method", help="only this method's runs")


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
                raise ValueError(f"--seeds must be >= 1, got {value}")
            override(cfg, "seeds", list(range(value)) if isinstance(cfg.seeds, list) else value)
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


def _raise_on_sigterm() -> None:
    def handler(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)


def _fail(e: BaseException, out: Path | None) -> int:
    if isinstance(e, KeyboardInterrupt):
        signum = getattr(e, "signum", signal.SIGINT)
        where = f": what was logged so far is in {out}; rerun the same command to resume" \
            if out else ""
        print(f"interrupted ({signal.Signals(signum).name}){where}", file=sys.stderr)
        return 128 + signum
    print(f"error: {e}", file=sys.stderr)
    return 2


def run_main(name: str, argv: Sequence[str], prog: str | None = None) -> int:
    """``run NAME [options]``: one experiment with its preset and overrides."""
    exp = registry.get(name)
    p = argparse.ArgumentParser(prog=prog, description=exp.doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    pre, _ = argparse.ArgumentParser(add_help=False).parse_known_args(argv)
    _common(p, exp.presets, f"results/<preset>/{name}")
    pre = p.parse_known_args([a for a in argv if a not in ("-h", "--help")])[0]
    cfg = exp.config(pre.preset)
    _key_flags(p, cfg)
    args, rest = p.parse_known_args(argv)
    dotted = [a for a in rest if a.startswith("--config.")]
    if len(dotted) != len(rest):
        p.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in dotted)}")
    changed = _apply(cfg, args, dotted)
    default_out = Path(cfg.results_dir or Path("results") / args.preset / name)
    if changed and args.out is None:
        raise ValueError(f"overrides change {name}'s config: pass --out DIR (the default "
                         f"{default_out} holds the preset's own results)")
    out = Path(args.out) if args.out else default_out
    configure_xla_flags()  # the flags the benchmark chose (fgrad/_xla_flags.py), before JAX runs
    if cfg.get("data_parallel") is not None:  # joins a multi-host job if the env says so
        from fgrad.train.parallel import init_distributed
        init_distributed()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    try:
        registry.runner(cfg.kind)(cfg, out, RunOptions(args.force, args.mnist_dir))
    except KeyboardInterrupt as e:
        return _fail(e, out)
    print(f"{name}: done in {time.perf_counter() - t0:.1f} s; results in {out}")
    return 0


def reproduce_main(argv: Sequence[str]) -> int:
    """``reproduce [options]``: every experiment of the chosen groups, then figures + report."""
    from fgrad.lab.config import PRESETS
    from fgrad.lab.reproduce import GROUPS, reproduce, select

    p = argparse.ArgumentParser(prog="python -m fgrad reproduce",
                                description="Run the experiments of a group, then draw the "
                                "figures and write REPORT.md.")
    _common(p, PRESETS, "results/<preset>")
    p.add_argument("--figures-only", action="store_true",
                   help="only redraw the figures and REPORT.md from the results files")
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these experiments")
    p.add_argument("--groups", nargs="+", default=list(GROUPS), choices=["paper", "beyond"],
                   help=f"experiment groups to run (default {' '.join(GROUPS)})")
    args = p.parse_args(argv)
    configure_xla_flags()
    out = Path(args.out or Path("results") / args.preset)
    command = shlex.join(["python", "-m", "fgrad", "reproduce", *argv])
    try:
        names = select(args.only, args.preset, args.groups)
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
    _raise_on_sigterm()
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
    except KeyboardInterrupt as e:
        return _fail(e, None)


def script_main(path: str, argv: Sequence[str] | None = None) -> int:
    """What ``python experiments/<name>.py [options]`` runs: ``run <name> [options]``."""
    name = Path(path).stem
    return main(["run", name, *(sys.argv[1:] if argv is None else argv)])


def entry(args: Any = None) -> None:
    """Console entry point."""
    sys.exit(main(args))
