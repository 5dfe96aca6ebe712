"""Paper-style figures (PNG and PDF, Agg backend) made only from results files.

:func:`make_figures` reads every section's results folder with its family's ``load`` and draws
it with its ``draw`` (the figures themselves are in the family modules, the panel helpers in
:mod:`fgrad.analysis.plotting`); nothing reruns training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fgrad.analysis.family import Section
from fgrad.analysis.plotting import save


def make_figures(out: str | Path, sections: Sequence[Section]) -> list[Path]:
    """Draws the figure of every section whose results folder exists under ``out``.

    All results are read before anything is drawn, so a bad file fails fast.

    Args:
      out: the preset's results folder (``results/<preset>``).
      sections: the experiments (results folder ``out/<name>``, family).

    Returns:
      The files written, ``out/figures/<experiment>.{png,pdf}``.

    Raises:
      ResultsError: naming the file, when a results file is missing or malformed.
    """
    out = Path(out)
    loaded = [(s, s.family.load(out / s.name)) for s in sections if (out / s.name).is_dir()]
    written: list[Path] = []
    for section, data in loaded:
        fig = section.family.draw(data, section.name)
        if fig is not None:
            written += save(fig, out / "figures", section.name)
    return written
