"""``REPORT.md`` from results files: the header, then one section per experiment.

Everything here reads the files an experiment wrote under ``OUT/<experiment>/`` (see
:mod:`fgrad._results`); nothing reruns training. The caller gives the sections (a
:class:`~fgrad.analysis.family.Section` names the results folder, the heading and the
:class:`~fgrad.analysis.family.Family` that turns the folder into Markdown); a section whose
folder is absent is shown as "not run". The metrics are defined in
:mod:`fgrad.analysis.metrics` and restated in :data:`DEFINITIONS`.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgrad._results import read_json, write_text_atomic
from fgrad.analysis.family import Section
from fgrad.analysis.metrics import SMOOTH_WINDOW
from fgrad.analysis.runs import machine_of, run_summaries

DEFINITIONS = (
    "Definitions. T(f): median wall time of one evaluation of the loss on one batch, timed as "
    "the steps run (the run's steps per compiled call evaluated in one call) after each run; a "
    "section uses one T(f) per (model, batch), the median over its runs (spread stated). A "
    "step's time: training wall time / steps (several steps per compiled call where "
    "configured; compilation and evaluation excluded). R_f = T(forward-gradient step) / T(f) "
    "and R_b = T(backprop step) / T(f) with that one T(f), so R_f / R_b is the ratio of the "
    "step times printed beside it. Training losses are smoothed by a "
    "trailing running mean of {window} steps; T_b is when backprop's smoothed loss reaches its "
    "minimum, T_f when forward gradient's smoothed loss first falls to that value (same seed). "
    "Values are mean ± std over seeds (ddof = 0); runs that diverged or did not finish are "
    "listed in their section and left out of every mean and figure.")


def _figure_lines(out: Path, name: str, title: str) -> list[str]:
    png = out / "figures" / f"{name}.png"
    if not png.exists():
        return []
    return ["", f"![{title}](figures/{name}.png)", "",
            f"Figure: `figures/{name}.png` (and `.pdf`)."]


def render_section(out: Path, section: Section) -> list[str]:
    """The section's heading and body, or a "not run" note when its results are absent."""
    exp_dir = out / section.name
    body = section.family.section(exp_dir) if exp_dir.is_dir() else []
    if not body:
        body = [f"*Not run*: no results in `{exp_dir}`."]
    return [f"## {section.title}", "", *body, *_figure_lines(out, section.name, section.title),
            ""]


def _env_line(env: dict[str, Any]) -> str:
    versions = ", ".join(f"{p} {env.get(p, '?')}" for p in ("jax", "jaxlib", "flax", "optax"))
    return f"{machine_of(env)}; {versions}"


def result_envs(out: Path, sections: Sequence[Section]) -> list[tuple[str, dict]]:
    """(experiment, env) of every results summary of ``sections`` under ``out`` that records
    its env."""
    return [(section.name, summary["env"]) for section in sections
            if (out / section.name).is_dir()
            for _, summary in run_summaries(out / section.name)
            if isinstance(summary.get("env"), dict)]


def _machine_lines(envs: Sequence[tuple[str, dict]]) -> list[str]:
    """One "Machine" line per distinct machine/versions, naming its experiments if several."""
    by_line: dict[str, list[str]] = {}
    for name, env in envs:
        names = by_line.setdefault(_env_line(env), [])
        if name not in names:
            names.append(name)
    if len(by_line) == 1:
        return [f"- Machine: {line}." for line in by_line]
    return [f"- Machine ({', '.join(names)}): {line}." for line, names in by_line.items()]


def _steal_note(invocation: dict) -> str:
    """How much CPU time the hypervisor took during an invocation's experiments, if recorded."""
    stolen = [v for v in (invocation.get("experiment_cpu_steal_s") or {}).values()
              if v is not None]
    wall, cores = invocation.get("experiments_wall_time_s"), invocation.get("cpu_cores")
    if not stolen or not wall or not cores:
        return ""
    share = sum(stolen) / (wall * cores)
    return (f" Meanwhile the hypervisor took {sum(stolen):.0f} CPU-s of the {cores} cores' "
            f"{wall * cores:.0f} ({100 * share:.1f} %, `/proc/stat` steal).")


def _header(out: Path, sections: Sequence[Section], preset: str | None, command: str | None
            ) -> list[str]:
    record = read_json(out / "reproduce.json") if (out / "reproduce.json").exists() else {}
    runs = [r for r in record.get("invocations", []) if not r.get("figures_only")]
    preset = preset or record.get("preset") or "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = ["# Gradients without Backpropagation: reproduction report", "",
             f"- Preset: `{preset}`; results folder `{out}`.",
             f"- Report generated {now} by `{command or 'fgrad.analysis.report.write_report'}`."]
    if runs:
        last = runs[-1]
        total = sum(float(r.get("experiments_wall_time_s") or 0.0) for r in runs)
        lines.append(f"- Experiments last run by `{last['command']}` on {last['date']}: "
                     f"wall time {last['experiments_wall_time_s']:.1f} s for "
                     f"{', '.join(last['experiments'])} (runs already complete are skipped); "
                     f"{total:.1f} s over all {len(runs)} recorded invocation(s) "
                     "(`reproduce.json`)." + _steal_note(last))
    envs = result_envs(out, sections)
    dates = sorted({str(env["date"])[:10] for _, env in envs if env.get("date")})
    if dates:
        lines.append(f"- Results dated {dates[0]}" + (f" to {dates[-1]}." if len(dates) > 1
                                                       else "."))
    lines += _machine_lines(envs)
    return lines + ["", DEFINITIONS.format(window=SMOOTH_WINDOW), ""]


def report_markdown(out: str | Path, sections: Sequence[Section], preset: str | None = None,
                    command: str | None = None) -> str:
    """The whole report as Markdown, from the results under ``out``: the header, then each of
    ``sections`` in order.

    Raises:
      ResultsError: naming the file, when a results file is missing or malformed.
    """
    out = Path(out)
    lines = _header(out, sections, preset, command)
    for section in sections:
        lines += render_section(out, section)
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: str | Path, sections: Sequence[Section], preset: str | None = None,
                 command: str | None = None) -> Path:
    """Writes ``out/REPORT.md`` from the results under ``out`` (see :func:`report_markdown`);
    returns its path."""
    path = Path(out) / "REPORT.md"
    write_text_atomic(path, report_markdown(out, sections, preset, command))
    return path
