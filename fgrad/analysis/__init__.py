"""The analysis layer: ``REPORT.md``, figures and benchmark Markdown from results files only.

It reads what experiments wrote (:mod:`fgrad._results`) and never trains or parses command
lines. :mod:`~fgrad.analysis.runs` loads runs, :mod:`~fgrad.analysis.metrics` computes the
paper's metrics over seeds, :mod:`~fgrad.analysis.tables` and :mod:`~fgrad.analysis.plotting`
hold the Markdown and panel helpers; one module per experiment family (``test_functions``,
``mnist``, ``quality``, ``k_sweep``, ``lr_sweep``, ``depth_sweep``) holds its section and figure
as a ``FAMILY``; :mod:`~fgrad.analysis.report` and :mod:`~fgrad.analysis.figures` assemble
them for a list of :class:`~fgrad.analysis.family.Section` given by the caller.
"""
