"""The experiment layer: configs, the registry of experiments, building, running, the CLI.

* :mod:`fgrad.lab.config`: ``ConfigDict`` defaults per kind, locked; overrides.
* :mod:`fgrad.lab.registry`: every experiment once (``experiments/*.py``), its runner, its
  report section and figure.
* :mod:`fgrad.lab.build`: config → model, loss, optimizer (shared by every runner).
* :mod:`fgrad.lab.run`: one module per kind of experiment.
* :mod:`fgrad.lab.reproduce`: ``make reproduce``; :mod:`fgrad.lab.cli`: ``python -m fgrad``.

``import fgrad`` never loads this package.
"""
