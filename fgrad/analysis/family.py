"""What an experiment family gives the report and the figures, and one section of the report.

A :class:`Family` (one per module of :mod:`fgrad.analysis`: ``test_functions``, ``mnist``,
``quality``, ``k_sweep``, ``lr_sweep``, ``depth_sweep``) turns a results folder into Markdown
and a figure; a :class:`Section` names the folder and the heading it is shown under. The list
of sections is built by the experiment registry, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Family:
    """How to report one kind of experiment.

    Attributes:
      section: the Markdown body from the results folder (an empty list: nothing to show).
      load: reads the results folder for the figure (raising ResultsError for a bad file).
      draw: the figure from what ``load`` returned and the experiment's name (None: nothing to
        draw).
    """

    section: Callable[[Path], list[str]]
    load: Callable[[Path], Any]
    draw: Callable[[Any, str], Figure | None]


@dataclass(frozen=True)
class Section:
    """One experiment of the report: results folder ``OUT/name``, heading, family."""

    name: str
    title: str
    family: Family
