"""Every ratio a REPORT.md prints agrees with the times printed beside it.

Read from the committed reports under ``results/`` (each as generated) and from a report
generated here from synthetic runs: R_f = T(fwd step)/T(f), R_b = T(bp step)/T(f) and R_f/R_b
against the step times of the same table, the multi-tangent sweep's R and "vs backprop" columns
against its ms column, and the ratios quoted in the summaries against the numbers they quote.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from fgrad.analysis.metrics import UNEVEN, lr_stats, seed_metrics
from fgrad.analysis.mnist import _uneven_note
from fgrad.analysis.report import write_report
from fgrad.analysis.runs import MnistRun
from tests.test_analysis import SECTIONS, results  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
REPORTS = sorted((ROOT / "results").glob("*/REPORT.md"))
# Printed with 4 significant digits (tables) or 3 (sentences): relative rounding error of one
# number ≤ 5e-4 and 5e-3; a ratio of two printed numbers compounds two of them. R_f / R_b is the
# ratio of the mean step times printed beside it (its ± is the seeds' spread), so no allowance
# for the spread: ``SPREAD`` is 0.
TABLE_TOL, SENTENCE_TOL, SPREAD = 2e-3, 1.2e-2, 0.0


def _mean(cell: str) -> float | None:
    """The leading number of a cell such as ``"2.145 ± 0.039"`` (None for n/a, not reached)."""
    m = re.match(r"\s*([-+0-9.eE]+)", cell)
    try:
        return float(m[1]) if m else None
    except ValueError:
        return None


def _close(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=tol)


def _mnist_tables(text: str) -> list[dict[str, float | None]]:
    """The per-η₀ tables of MNIST sections: row label → mean value."""
    tables = []
    for block in re.split(r"\n### ", text)[1:]:
        rows = {}
        for line in block.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 2 and line.startswith("| "):
                rows[cells[0]] = _mean(cells[1])
        if any(k.startswith("R_f = ") for k in rows):
            tables.append(rows)
    return tables


def _row(rows: dict[str, float | None], prefix: str) -> float | None:
    return next((v for k, v in rows.items() if k.startswith(prefix)), None)


def check_report(text: str) -> int:
    """Asserts every checked ratio of a report; returns how many were checked."""
    checked = 0
    for rows in _mnist_tables(text):
        f_ms, ms_f, ms_b = (_row(rows, p) for p in ("T(f)", "forward-gradient step, ms",
                                                    "backprop step, ms"))
        r_f, r_b, r_fb = (_row(rows, p) for p in ("R_f = ", "R_b = ", "R_f / R_b"))
        for r, ms in ((r_f, ms_f), (r_b, ms_b)):
            if None not in (r, ms, f_ms):
                assert _close(r, ms / f_ms, TABLE_TOL), (r, ms, f_ms)
                checked += 1
        if None not in (r_fb, ms_f, ms_b):
            assert _close(r_fb, ms_f / ms_b, TABLE_TOL + SPREAD), (r_fb, ms_f, ms_b)
            assert _close(r_fb, r_f / r_b, TABLE_TOL + SPREAD), (r_fb, r_f, r_b)
            checked += 2
    # Summaries: "R_f = A loss evaluations and a backprop step R_b = B ... (R_f/R_b = C".
    for a, b, c in re.findall(r"R_f = ([0-9.e+-]+) loss evaluations and a backprop step "
                              r"R_b = ([0-9.e+-]+).*?\(R_f/R_b = ([0-9.e+-]+)", text):
        assert _close(float(c), float(a) / float(b), SENTENCE_TOL + SPREAD), (a, b, c)
        checked += 1
    # Test functions: "took X× the time of a backprop iteration (A vs B µs".
    for x, a, b in re.findall(r"took ([0-9.]+)× the time of a backprop iteration "
                              r"\(([0-9.e+-]+) vs ([0-9.e+-]+) µs", text):
        assert _close(float(x), float(a) / float(b), SENTENCE_TOL), (x, a, b)
        checked += 1
    # Multi-tangent sweep: R = ms / T(f) of the section, vs backprop = ms / backprop's ms.
    sweep = re.search(r"## Multi-tangent.*?(?=\n## |\Z)", text, re.S)
    shared = sweep and re.search(r"T\(f\) = ([0-9.e+-]+) ms", sweep[0])
    if shared:
        f_ms = float(shared[1])
        rows = [[c.strip() for c in line.strip().strip("|").split("|")]
                for line in sweep[0].splitlines() if line.startswith("| ")][2:]
        bp = {r[1]: _mean(r[5]) for r in rows if r[0] == "backprop"}
        for r in rows:
            ms, ratio, vs = _mean(r[5]), _mean(r[6]), _mean(r[7])
            assert _close(ratio, ms / f_ms, TABLE_TOL), r
            if r[1] in bp:  # the same η₀'s backprop run (same seed: one seed in these tables)
                assert _close(vs, ms / bp[r[1]], TABLE_TOL), r
                checked += 1
            checked += 1
    return checked


@pytest.mark.parametrize("report", REPORTS, ids=[p.parent.name for p in REPORTS])
def test_committed_report_ratios_agree_with_their_times(report: Path):
    assert check_report(report.read_text()) > 0


def test_generated_report_ratios_agree_with_their_times(results: Path):  # noqa: F811
    text = write_report(results, SECTIONS, "cpu").read_text()
    assert check_report(text) >= 5


def test_the_check_fails_on_a_contradicting_table():
    bad = ("\n### η₀ = 0.0002\n\n| quantity | value | paper |\n|---|---|---|\n"
           "| T(f): loss on one batch, ms | 2.0 |  |\n| forward-gradient step, ms | 6.0 |  |\n"
           "| backprop step, ms | 4.0 |  |\n| R_f = T(fwd-grad step) / T(f) | 3.4 |  |\n"
           "| R_b = T(backprop step) / T(f) | 2.0 |  |\n| R_f / R_b | 1.5 |  |\n")
    with pytest.raises(AssertionError):
        check_report(bad)


def _timed_run(method: str, ms: np.ndarray, loss: np.ndarray) -> MnistRun:
    """A synthetic complete run whose steps took ``ms`` (one step per compiled call)."""
    summary = {"method": method, "learning_rate": 2e-4, "seed": 0, "steps": len(ms),
               "steps_per_call": 1, "f_ms": 10.0, "env": {"device": "cpu (test)"}}
    time = np.cumsum(ms) / 1e3
    return MnistRun(Path(method), summary, np.arange(1, len(ms) + 1), loss, time,
                    np.array([0.0, time[-1]]), np.array([0.1, 0.5]))


def test_uneven_wall_times_are_flagged_with_the_estimate_from_medians():
    n = 2000
    loss = np.linspace(2.3, 1.0, n)
    backprop = _timed_run("backprop", np.full(n, 20.0), loss)
    fast = np.concatenate([np.full(1400, 10.0), np.full(n - 1400, 30.0)])  # shared at the end
    for forward, uneven in ((_timed_run("forward", np.full(n, 10.0), loss - 0.1), False),
                            (_timed_run("forward", fast, loss - 0.1), True)):
        m = seed_metrics(forward, backprop, window=10)
        assert m["evenness_backprop"] == pytest.approx(1.0)
        assert (m["evenness_forward"] > UNEVEN) is uneven
        assert m["uneven"] == float(uneven)
        # the estimate: iterations ratio × median step-time ratio (10 ms / 20 ms)
        assert m["T_f/T_b (medians)"] == pytest.approx(m["step_f/step_b"] * 0.5)
        stats = lr_stats({0: {"forward": forward, "backprop": backprop}}, window=10)
        note = _uneven_note(stats)
        assert ("are not timings" in note) is uneven
        if uneven:  # the quiet estimate differs from the measured (slowed) T_f/T_b
            assert f"{m['T_f/T_b (medians)']:.3g}" in note
            assert m["T_f/T_b"] > m["T_f/T_b (medians)"]
