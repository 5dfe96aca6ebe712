"""How each kind of experiment runs: one module per ``config.kind``.

Each module defines ``run(cfg, out_dir, opts) -> None``: it runs every part of the (locked)
config not already complete in ``out_dir`` and writes results files there
(:mod:`fgrad._results`). ``opts`` are the :class:`RunOptions` of the command line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunOptions:
    """Options of one invocation, not of the experiment (they never change its results).

    Attributes:
      force: rerun parts whose results are complete (and overwrite results of another config).
      mnist_dir: directory of the MNIST IDX files (None: ``$FGRAD_MNIST_DIR``, else TFDS).
    """

    force: bool = False
    mnist_dir: str | None = None
