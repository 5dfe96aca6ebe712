"""Every experiment of the paper, then the figures and REPORT.md (the command behind
``make reproduce``).

Run:
  python experiments/reproduce.py --preset cpu        # → results/cpu/{figures/,REPORT.md}
  python experiments/reproduce.py --preset paper      # the paper's settings (a GPU job)
  python experiments/reproduce.py --only logreg,mlp   # some experiments (figures: all present)
  python experiments/reproduce.py --figures-only      # redraw figures + report from the files

Runs already complete are skipped (an interrupted reproduce resumes where it stopped);
``--force`` reruns them. MNIST comes from ``--mnist-dir``, else ``$FGRAD_MNIST_DIR``, else TFDS.
The command and its wall time are recorded in ``OUT/reproduce.json`` and the report's header.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fgrad import run_experiment
from fgrad._experiment import PRESETS, add_common_arguments
from fgrad._figures import make_figures
from fgrad._report import write_report
from fgrad._results import ResultsError, read_json, write_json
from fgrad._xla_flags import configure_xla_flags

HERE = Path(__file__).resolve().parent
# The experiments, in run order: each is HERE/<name>.py with get_config(preset), and writes
# OUT/<name>/. Append new ones here (and give them a report section and a figure).
EXPERIMENTS = ["test_functions", "logreg", "mlp", "cnn", "depth_sweep", "estimator_quality",
               "k_sweep", "lr_sweep"]

Config = dict[str, Any]
ConfigLoader = Callable[[str], Callable[[str], Config]]


def load_get_config(name: str) -> Callable[[str], Config]:
    """``get_config`` of the experiment script ``experiments/<name>.py``."""
    path = HERE / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_fgrad_experiment_{name}", path)
    if spec is None or spec.loader is None or not path.exists():
        raise ValueError(f"experiment script {path} is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config


def select(only: str | None, known: Sequence[str] = EXPERIMENTS) -> list[str]:
    """The experiments named by ``--only`` (comma-separated), in run order; all when None."""
    if not only:
        return list(known)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown experiment {', '.join(unknown) or repr(only)}: "
                         f"known ones are {', '.join(known)}")
    return [n for n in known if n in names]


def run_experiments(names: Sequence[str], preset: str, out: Path, force: bool = False,
                    mnist_dir: str | None = None, get_config: ConfigLoader = load_get_config
                    ) -> dict[str, float]:
    """Runs each named experiment into ``out/<name>`` (complete runs skipped unless ``force``).

    Returns:
      Wall seconds per experiment.
    """
    seconds = {}
    for name in names:
        print(f"== {name} ({preset}) → {out / name}", flush=True)
        t0 = time.perf_counter()
        run_experiment(get_config(name)(preset), out / name, force=force, mnist_dir=mnist_dir)
        seconds[name] = time.perf_counter() - t0
    return seconds


def _record(out: Path, preset: str, invocation: dict[str, Any]) -> None:
    """Adds or updates this invocation (matched by ``started``) in ``out/reproduce.json``."""
    path = out / "reproduce.json"
    record = read_json(path) if path.exists() else {}
    history = [r for r in record.get("invocations", [])
               if r.get("started") != invocation["started"]]
    write_json(path, {"preset": preset, "command": invocation["command"],
                      "wall_time_s": invocation.get("wall_time_s"),
                      "invocations": [*history, invocation]})


def reproduce(preset: str = "cpu", out: str | Path | None = None,
              names: Sequence[str] | None = None, force: bool = False,
              figures_only: bool = False, mnist_dir: str | None = None,
              command: str | None = None, get_config: ConfigLoader = load_get_config
              ) -> dict[str, Any]:
    """Runs the experiments (unless ``figures_only``), then draws the figures and REPORT.md.

    Args:
      preset: ``"cpu"`` or ``"paper"``.
      out: results folder (default ``results/<preset>``).
      names: experiments to run (default all of :data:`EXPERIMENTS`).
      force: rerun complete runs.
      figures_only: only redraw figures and the report from the results files.
      mnist_dir: MNIST IDX directory (None: ``$FGRAD_MNIST_DIR``, else TFDS).
      command: the command line to record (default: this function's call).
      get_config: experiment name → its ``get_config`` (tests pass small configs).

    Returns:
      This invocation's record (also in ``out/reproduce.json``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    out = Path(out or Path("results") / preset)
    names = list(names or EXPERIMENTS)
    t0 = time.perf_counter()
    now = datetime.datetime.now(datetime.timezone.utc)
    inv: dict[str, Any] = {
        "command": command or f"reproduce(preset={preset!r}, out={str(out)!r})",
        "date": now.isoformat(timespec="seconds"), "started": now.isoformat(),
        "figures_only": figures_only, "force": force,
        "experiments": [] if figures_only else names}
    out.mkdir(parents=True, exist_ok=True)
    if not figures_only:
        per = run_experiments(names, preset, out, force, mnist_dir, get_config)
        inv.update(experiment_wall_time_s=per, experiments_wall_time_s=sum(per.values()))
        _record(out, preset, inv)
    t1 = time.perf_counter()
    figures = make_figures(out)
    report = write_report(out, preset, inv["command"])
    inv.update(figures_wall_time_s=time.perf_counter() - t1,
               wall_time_s=time.perf_counter() - t0,
               figures=[str(p) for p in figures], report=str(report))
    _record(out, preset, inv)
    return inv


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 after a one-line error)."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "results/<preset>")
    p.add_argument("--figures-only", action="store_true",
                   help="only redraw the figures and REPORT.md from the results files")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help=f"run only these experiments (of {', '.join(EXPERIMENTS)})")
    args = p.parse_args(argv)
    configure_xla_flags()  # the flags the benchmark chose, before JAX runs anything
    out = Path(args.out or Path("results") / args.preset)
    command = shlex.join(["python", "experiments/reproduce.py", *argv])
    try:
        inv = reproduce(args.preset, out, select(args.only), args.force, args.figures_only,
                        args.mnist_dir, command)
    except (ValueError, TypeError, ResultsError) as e:  # MnistError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: runs already complete are kept in {out}; rerun the same command "
              "to resume", file=sys.stderr)
        return 130
    print(f"reproduce: total wall time {inv['wall_time_s']:.1f} s")
    print(f"figures in {out / 'figures'}/, report in {inv['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
