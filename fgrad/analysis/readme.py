"""The README's result numbers, generated from the committed results (never typed by hand).

The README holds one generated block between ``<!-- results:start -->`` and
``<!-- results:end -->``: the headline table of the paper's MNIST claims against this
reproduction, per preset folder, and how long ``make reproduce`` took. :func:`write_readme`
(run by ``make figures`` and ``python -m fgrad.analysis.readme``) rewrites it;
:func:`stale_lines` lists what differs from the results, for ``tests/test_readme.py``.

Example::

  python -m fgrad.analysis.readme            # rewrite README.md's block from results/
  python -m fgrad.analysis.readme --check    # exit 1, naming each stale line, if it differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fgrad.analysis.control import format_steps
from fgrad.analysis.control import rows as control_rows
from fgrad.analysis.metrics import METHOD_LABELS, Stat, group_runs, lr_stats, shared_f_ms
from fgrad.analysis.mnist import flagged, paper_values
from fgrad.analysis.runs import load_mnist_runs
from fgrad.analysis.tables import format_stat, markdown_table

START, END = "<!-- results:start -->", "<!-- results:end -->"
ROOT = Path(__file__).resolve().parents[2]
CONTROL_LINK = ("results/full/REPORT.md#control-forward-gradient-vs-backprop-plus-the-same-noise-"
                "per-iteration-beyond-the-paper")
# (preset folder, experiment) pairs of the headline table, in order.
HEADLINE = (("full", "logreg"), ("full", "mlp"), ("full", "cnn"))
TITLES = {"logreg": "logistic regression", "mlp": "MLP", "cnn": "CNN"}
ANCHORS = {"logreg": "logistic-regression-on-mnist", "mlp": "mlp-on-mnist",
           "cnn": "cnn-on-mnist"}


def _cell(stat: Stat | None, paper: float | None = None) -> str:
    text = format_stat(stat)
    return f"{text} (paper {paper:g})" if paper is not None else text


def _wall_cell(stats: dict[str, Stat | None], paper: float | None) -> str:
    """T_f/T_b; where the wall times are uneven (a shared machine), the estimate from the
    median step times beside it, so the measured value is never read alone."""
    cell = _cell(stats.get("T_f/T_b"), paper)
    if not flagged(stats, "uneven"):
        return cell
    quiet = format_stat(stats.get("T_f/T_b (medians)"))
    return f"{cell}; uneven wall times, from median steps {quiet}"


def _pair(stats: dict[str, Stat | None], key: str) -> str:
    f, b = stats.get(f"{key}_forward"), stats.get(f"{key}_backprop")
    return f"{format_stat(f)} / {format_stat(b)}"


def headline_rows(results: Path) -> list[list[str]]:
    """One row per (experiment, η₀) of :data:`HEADLINE` with complete pairs (forward gradient
    and backprop of one seed) in ``results``; seeds without their pair are left out."""
    rows = []
    for preset, name in HEADLINE:
        exp_dir = results / preset / name
        runs = load_mnist_runs(exp_dir)[0] if exp_dir.is_dir() else []
        if not runs:
            continue
        shared = shared_f_ms(runs)
        machines = sorted({r.machine for r in runs})
        for lr, seeds in sorted(group_runs(runs).items()):
            seeds = {s: r for s, r in seeds.items() if {"forward", "backprop"} <= set(r)}
            if not seeds:  # a claim is a pair: a method alone makes no row
                continue
            stats = lr_stats(seeds, f_ms=shared)
            paper = paper_values(name, lr)
            anchor = ANCHORS.get(name, name)
            link = f"[{TITLES.get(name, name)}](results/{preset}/REPORT.md#{anchor})"
            rows.append([f"{link}, η₀ = {lr:g}", f"{preset}, {len(seeds)}",
                         _cell(stats.get("step_f/step_b"), paper.get("step_f/step_b")),
                         _wall_cell(stats, paper.get("T_f/T_b")),
                         _cell(stats.get("R_f/R_b"), paper.get("R_f/R_b")),
                         _pair(stats, "acc"), _pair(stats, "mem"), "; ".join(machines)])
    return rows


def _runs_of(results: Path, preset: str) -> list[dict]:
    """The invocations of ``results/<preset>/reproduce.json`` that ran experiments (not
    figures-only), oldest first; none when the file is missing."""
    path = results / preset / "reproduce.json"
    invocations = json.loads(path.read_text())["invocations"] if path.is_file() else []
    return [i for i in invocations if not i.get("figures_only")]


def _reproduce_line(results: Path) -> str:
    """How long the last ``make reproduce`` from an empty folder took (cpu preset)."""
    runs = [i for i in _runs_of(results, "cpu") if i.get("experiments")]
    if not runs:
        return "`make reproduce` (cpu preset): no recorded run in `results/cpu/reproduce.json`."
    last = runs[-1]
    return (f"`make reproduce` (cpu preset; {', '.join(last['experiments'])}) last ran in "
            f"{last['wall_time_s'] / 60:.1f} min on {last.get('cpu_cores', '?')} cores "
            f"({last['date'][:10]}, `results/cpu/reproduce.json`; machine in "
            "`results/cpu/REPORT.md`).")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def experiment_times(results: Path, preset: str) -> dict[str, float]:
    """Wall seconds per experiment of a preset, from the last ``reproduce`` invocation that ran
    it (``results/<preset>/reproduce.json``), for experiments whose folder is there."""
    times: dict[str, float] = {}
    for inv in _runs_of(results, preset):
        times.update(inv.get("experiment_wall_time_s") or {})
    return {name: s for name, s in times.items() if (results / preset / name).is_dir()}


def _times_line(results: Path) -> str:
    """How long each cpu-preset experiment took, as last run by ``reproduce``."""
    times = experiment_times(results, "cpu")
    if not times:
        return ""
    parts = ", ".join(f"{name} {_duration(s)}" for name, s in times.items())
    return (f"Each cpu-preset experiment as last run by `make reproduce` / `make beyond` "
            f"(wall time, 2 cores): {parts}.")


def _control_line(results: Path) -> str:
    """The noise control of the full preset: steps to backprop's best loss per method."""
    exp_dir = results / "full" / "mlp_control"
    runs = load_mnist_runs(exp_dir)[0] if exp_dir.is_dir() else []
    by = {r["method"]: r for r in control_rows(runs)} if runs else {}
    if not {"forward", "backprop", "backprop_noise"} <= set(by) or not by["backprop"]["reach"]:
        return ""
    b = by["backprop"]["reach"].mean
    parts = [f"{METHOD_LABELS[m]} at step {format_steps(by[m]['reach'])} "
             f"({by[m]['reach'].mean / b:.3g} of backprop's)"
             for m in ("forward", "backprop_noise") if by[m]["reach"] and by[m]["reach"].n]
    rates = ", ".join(f"{lr:g}" for lr in sorted({r.learning_rate for r in runs}))
    return (f"[Control]({CONTROL_LINK}) (MLP, η₀ = {rates}, {by['forward']['seeds']} seeds): "
            f"backprop reaches its best loss at step {format_steps(by['backprop']['reach'])}; "
            + ", ".join(parts) + ".")


def block(results: Path) -> list[str]:
    """The generated README block, markers included."""
    header = ["claim (report section)", "preset, seeds",
              "iterations to backprop's best loss, forward ÷ backprop",
              "T_f / T_b (wall time)", "R_f / R_b (step cost)",
              "test accuracy, forward / backprop", "memory of a step, MiB, forward / backprop",
              "machine"]
    rows = headline_rows(results)
    table = markdown_table(header, rows) if rows else ["No complete MNIST runs in `results/`."]
    return [START,
            "<!-- generated by `make figures` (fgrad/analysis/readme.py) from results/; "
            "do not edit -->", "", *table, "",
            "The paper's values beside ours are its GPU runs' (the iteration ratio it implies: its "
            "T_f/T_b ÷ its R_f/R_b); wall times and step costs are this CPU's. A missing row has "
            "no complete runs yet.", "",
            *[line for text in (_control_line(results), _reproduce_line(results),
                                _times_line(results)) if text for line in (text, "")][:-1],
            END]


def _split(text: str) -> tuple[str, str, str]:
    if START not in text or END not in text:
        raise ValueError(f"the README has no {START} … {END} block: add both markers on lines "
                         "of their own where the results table goes")
    head, rest = text.split(START, 1)
    middle, tail = rest.split(END, 1)
    return head, START + middle + END, tail


def stale_lines(readme: Path, results: Path) -> list[str]:
    """Lines of the README's block that differ from what the results give (empty: up to date),
    each as ``README.md line N: has '…', the results give '…'``."""
    text = readme.read_text()
    head, current, _ = _split(text)
    first = head.count("\n") + 1
    want = block(results)
    have = current.split("\n")
    out = []
    for i in range(max(len(want), len(have))):
        h = have[i] if i < len(have) else "(nothing)"
        w = want[i] if i < len(want) else "(nothing)"
        if h != w:
            out.append(f"{readme.name} line {first + i}: has {h!r}, the results give {w!r}")
    return out


def write_readme(readme: Path = ROOT / "README.md", results: Path = ROOT / "results") -> bool:
    """Rewrites the README's generated block from ``results``; True when it changed."""
    text = readme.read_text()
    head, _, tail = _split(text)
    new = head + "\n".join(block(results)) + tail
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgrad.analysis.readme", description=__doc__
                                .split("\n")[0])
    p.add_argument("--check", action="store_true", help="report stale lines, change nothing")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--results", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)
    if args.check:
        stale = stale_lines(args.readme, args.results)
        for line in stale:
            print(line, file=sys.stderr)
        return 1 if stale else 0
    changed = write_readme(args.readme, args.results)
    print(f"{args.readme}: results block {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
