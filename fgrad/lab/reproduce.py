"""``make reproduce``: run the experiments of a group, then draw the figures and REPORT.md.

Runs already complete are skipped (an interrupted reproduce resumes where it stopped;
unfinished MNIST runs continue from their last checkpoint); ``force`` reruns them. The command
and its wall time are recorded in ``OUT/reproduce.json`` and the report's header, with the CPU
seconds the hypervisor stole from the machine meanwhile (``cpu_steal_s``, Linux; on a shared VM
they lengthen the wall time without being the run's).
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgrad._env import cpu_steal_s
from fgrad._results import ResultsError, read_json, write_json
from fgrad.analysis.figures import make_figures
from fgrad.analysis.report import write_report
from fgrad.lab import registry
from fgrad.lab.run import RunOptions

GROUPS = ("paper",)  # what make reproduce runs by default (make beyond: the "beyond" group)
REPORTED = ("paper", "beyond")  # the groups the report and the figures show


def run_experiment(name: str, preset: str, out: Path, opts: RunOptions,
                   directory: Path | None = None) -> float:
    """Runs one registered experiment for ``preset`` into ``out``; returns its wall seconds."""
    cfg = registry.get(name, directory).config(preset)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    registry.runner(cfg.kind)(cfg, out, opts)
    return time.perf_counter() - t0


def _stolen(since: float | None) -> float | None:
    """CPU seconds stolen by the hypervisor since the reading ``since`` (None if unknown)."""
    now = cpu_steal_s()
    return None if since is None or now is None else now - since


def select(only: str | None, preset: str, groups: Sequence[str] = GROUPS,
           directory: Path | None = None) -> list[str]:
    """The experiments of ``groups`` for ``preset``, in registry order; with ``only``
    (comma-separated names), just those."""
    known = [e.name for g in groups for e in registry.in_group(g, preset, directory)]
    known = [e for e in registry.experiments(directory) if e in known]
    if not only:
        return known
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown experiment {', '.join(unknown) or repr(only)}: "
                         f"known ones are {', '.join(known)}")
    return [n for n in known if n in names]


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
              command: str | None = None, directory: Path | None = None) -> dict[str, Any]:
    """Runs the experiments (unless ``figures_only``), then draws the figures and REPORT.md.

    Args:
      preset: a preset every selected experiment has (``"cpu"``, ``"paper"``).
      out: results folder (default ``results/<preset>``).
      names: experiments to run (default: every experiment of :data:`GROUPS`).
      force: rerun complete runs.
      figures_only: only redraw figures and the report from the results files.
      mnist_dir: MNIST IDX directory (None: ``$FGRAD_MNIST_DIR``, else TFDS).
      command: the command line to record (default: this function's call).
      directory: the experiments folder (default the repository's ``experiments/``).

    Returns:
      This invocation's record (also in ``out/reproduce.json``).
    """
    out = Path(out or Path("results") / preset)
    names = list(names or select(None, preset, directory=directory))
    t0, steal0 = time.perf_counter(), cpu_steal_s()
    now = datetime.datetime.now(datetime.timezone.utc)
    inv: dict[str, Any] = {
        "command": command or f"reproduce(preset={preset!r}, out={str(out)!r})",
        "date": now.isoformat(timespec="seconds"), "started": now.isoformat(),
        "figures_only": figures_only, "force": force, "cpu_cores": os.cpu_count(),
        "experiments": [] if figures_only else names}
    sections = registry.sections(select(None, preset, REPORTED, directory), preset, directory)
    if figures_only and not any((out / s.name).is_dir() for s in sections):
        where = "does not exist" if not out.exists() else \
            f"holds no results of {', '.join(s.name for s in sections)}"
        raise ResultsError(f"--figures-only draws from results already in --out, but {out} "
                           f"{where}: run the experiments first (python -m fgrad reproduce "
                           f"--preset {preset} --out {out}) or pass the --out that holds them")
    out.mkdir(parents=True, exist_ok=True)
    if not figures_only:
        opts = RunOptions(force=force, mnist_dir=mnist_dir)
        per, stolen = {}, {}
        for name in names:
            print(f"== {name} ({preset}) → {out / name}", flush=True)
            before = cpu_steal_s()
            per[name] = run_experiment(name, preset, out / name, opts, directory)
            stolen[name] = _stolen(before)
        inv.update(experiment_wall_time_s=per, experiments_wall_time_s=sum(per.values()),
                   experiment_cpu_steal_s=stolen)
        _record(out, preset, inv)
    t1 = time.perf_counter()
    figures = make_figures(out, sections)
    report = write_report(out, sections, preset, inv["command"])
    inv.update(figures_wall_time_s=time.perf_counter() - t1,
               wall_time_s=time.perf_counter() - t0, cpu_steal_s=_stolen(steal0),
               figures=[str(p) for p in figures], report=str(report))
    _record(out, preset, inv)
    return inv


