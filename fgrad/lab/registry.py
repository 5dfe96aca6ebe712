"""The registry of experiments: every ``experiments/*.py`` once, with how it runs and reports.

An experiment is declared once, by its file ``experiments/<name>.py``: a module docstring (the
command to run it), ``get_config(preset)`` returning a locked ``ConfigDict``
(:mod:`fgrad.lab.config`) and, optionally, ``PRESETS`` (default
:data:`fgrad.lab.config.PRESETS`). Its config names everything else:

* ``kind`` → how it runs: the module ``fgrad.lab.run.<kind>`` (its ``run(cfg, out, opts)``);
* ``report`` → its report section and figure: ``fgrad.analysis.<report>.FAMILY``;
* ``title``, ``group`` and ``order`` → its heading, which command runs it (``make reproduce``
  for ``"paper"``, ``make beyond`` for ``"beyond"``) and its place in both.

``make reproduce``, the report, the figures and the command line all read :func:`experiments`,
so adding an experiment of an existing kind is one new file in ``experiments/``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ml_collections import ConfigDict

from fgrad._lock import folder_lock
from fgrad.lab.config import PRESETS, finalize

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


@dataclass(frozen=True)
class Experiment:
    """One experiment file.

    Attributes:
      name: the file stem.
      path: the file.
      doc: its docstring (how to run it).
      presets: the presets ``get_config`` accepts.
      get_config: ``get_config(preset) -> ConfigDict``.
    """

    name: str
    path: Path
    doc: str
    presets: tuple[str, ...]
    get_config: Callable[[str], ConfigDict]

    def config(self, preset: str) -> ConfigDict:
        """The experiment's locked config for ``preset`` (a one-line ValueError if unknown)."""
        if preset not in self.presets:
            raise ValueError(f"experiment {self.name!r} has no preset {preset!r}: use one of "
                             f"{', '.join(self.presets)}")
        cfg = self.get_config(preset)
        if not isinstance(cfg, ConfigDict) or cfg.get("name") != self.name:
            raise ValueError(f"{self.path}: get_config must return a ConfigDict named "
                             f"{self.name!r} (from fgrad.lab.config.defaults)")
        return cfg if cfg.is_locked else finalize(cfg)

    @property
    def summary(self) -> str:
        """The first line of its docstring."""
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


def load_experiment(path: Path) -> Experiment:
    """The :class:`Experiment` of one file (imported as a module of its own)."""
    spec = importlib.util.spec_from_file_location(f"fgrad_experiment_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"experiment file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"experiment file {path} defines no get_config(preset)")
    return Experiment(path.stem, path, module.__doc__ or "",
                      tuple(getattr(module, "PRESETS", PRESETS)), module.get_config)


def _experiments(directory: Path) -> dict[str, Experiment]:
    if not directory.is_dir():
        raise ValueError(f"experiments folder {directory} is missing (fgrad's experiments live "
                         "in the repository's experiments/ folder)")
    found = [load_experiment(p) for p in sorted(directory.glob("*.py"))
             if not p.name.startswith("_")]

    def order(e: Experiment) -> tuple[int, str]:
        return int(e.config(e.presets[0]).order), e.name

    return {e.name: e for e in sorted(found, key=order)}


def experiments(directory: Path | None = None) -> dict[str, Experiment]:
    """Every experiment of ``directory`` (default :data:`EXPERIMENTS_DIR`), by name, in order."""
    return _experiments(Path(directory or EXPERIMENTS_DIR).resolve())


def get(name: str, directory: Path | None = None) -> Experiment:
    """The experiment ``name``, or a one-line ValueError listing the known ones."""
    known = experiments(directory)
    if name not in known:
        raise ValueError(f"unknown experiment {name!r}: known ones are {', '.join(known)}")
    return known[name]


def in_group(group: str, preset: str, directory: Path | None = None) -> list[Experiment]:
    """The experiments whose config (for ``preset``) is in ``group``, in order."""
    return [e for e in experiments(directory).values()
            if preset in e.presets and e.config(preset).group == group]


def runner(kind: str) -> Callable:
    """``run(cfg, out_dir, opts)`` of experiment kind ``kind`` (``fgrad.lab.run.<kind>``),
    holding ``out_dir``'s writer lock (:func:`fgrad._lock.folder_lock`) while it runs: a second
    writer of the folder is refused in one line. In a multi-process job, process 0 holds it."""
    run = importlib.import_module(f"fgrad.lab.run.{kind}").run

    def locked(cfg, out_dir, opts):
        import jax

        if jax.process_count() > 1 and jax.process_index() != 0:
            return run(cfg, out_dir, opts)
        with folder_lock(out_dir):
            return run(cfg, out_dir, opts)

    return locked


def sections(names: Sequence[str], preset: str, directory: Path | None = None) -> list:
    """The report sections (:class:`fgrad.analysis.family.Section`) of the named experiments,
    in registry order, for those that have a report family."""
    from fgrad.analysis.family import Section

    out = []
    for e in experiments(directory).values():
        if e.name in names:  # an experiment without this preset still has its (empty) section
            cfg = e.config(preset if preset in e.presets else e.presets[0])
            if cfg.report:
                family = importlib.import_module(f"fgrad.analysis.{cfg.report}").FAMILY
                out.append(Section(e.name, cfg.title, family))
    return out
