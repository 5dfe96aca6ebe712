"""Markdown building blocks shared by every section: one table writer and one number formatter.

:func:`markdown_table` writes every table of the report and of the benchmark files;
:func:`fmt` formats every optional number (``missing`` for None: :data:`DASH` in the benchmark
files, :data:`NA` in the report), :func:`mib` every byte count, :func:`format_stat` every
mean ± std over seeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fgrad.analysis.metrics import MIB, Stat
from fgrad.analysis.runs import Excluded, MnistRun

DASH = "–"  # a missing value in the benchmark files
NA = "n/a"  # a missing value in the report


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def fmt(value: float | None, spec: str = ".3g", missing: str = DASH) -> str:
    """A number in the format ``spec``, or ``missing`` for None."""
    return missing if value is None else format(value, spec)


def mib(nbytes: float | None, missing: str = DASH) -> str:
    """A byte count in MiB with one decimal, or ``missing`` for None."""
    return fmt(None if nbytes is None else nbytes / MIB, ".1f", missing)


def seconds(t: float) -> str:
    """A wall time for prose and titles: ``"2,509 s"`` from 1000 s on, ``"41.4 s"`` below
    (never ``"2.51e+03 s"``)."""
    return f"{t:,.0f} s" if abs(t) >= 1000 else f"{t:.3g} s"


def mean_std(mean: float, std: float) -> str:
    """``mean ± std`` with 4 and 2 significant digits."""
    return f"{mean:.4g} ± {std:.2g}"


def format_stat(stat: Stat | None) -> str:
    """``mean ± std``, 4 and 2 significant digits (the mean alone for one seed)."""
    if stat is None:
        return NA
    total = stat.n + stat.missed
    if stat.n == 0:
        return f"not reached ({stat.missed}/{total} seeds)"
    text = f"{stat.mean:.4g}" if stat.n == 1 else mean_std(stat.mean, stat.std)
    if stat.missed:
        text += f" (not reached in {stat.missed}/{total} seeds)"
    return text


def excluded_lines(excluded: Sequence[Excluded]) -> list[str]:
    """The runs left out of a section's means, as a Markdown list (nothing when none were)."""
    if not excluded:
        return []
    return ["", f"**Excluded from every mean and figure** ({len(excluded)} run(s)):", "",
            *[e.describe() for e in excluded]]


INPUT_WORDS = {"standardize": "standardised pixels (x/255 − 0.1307)/0.3081 (PyTorch's MNIST "
               "convention)", "unit": "pixels x/255 in [0, 1], not standardised"}
INIT_WORDS = {"pytorch": "PyTorch's initialisation", "flax": "Flax's initialisation"}


def _words(values: set[str], words: dict[str, str]) -> str:
    text = " and ".join(words.get(v, v) for v in sorted(values))
    return f"mixed: {text}" if len(values) > 1 else text


def data_line(runs: Sequence[MnistRun]) -> str:
    """The runs' input convention and initialisation, e.g. "Inputs: standardised pixels …;
    PyTorch's initialisation." (both stated when the runs differ)."""
    return (f"Inputs: {_words({r.inputs for r in runs}, INPUT_WORDS)}; "
            f"{_words({r.init for r in runs}, INIT_WORDS)}.")


def setup_line(runs: Sequence[MnistRun]) -> str:
    """Steps, batch size, seeds, input convention and initialisation of some runs, and how
    values are aggregated."""
    steps = max(int(r.summary["steps"]) for r in runs)
    batch = runs[0].summary.get("config", {}).get("batch_size", "?")
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in runs}))
    return (f"{steps} steps, batch {batch}, seeds {seeds}; mean ± std over seeds (ddof = 0). "
            f"{data_line(runs)}")
