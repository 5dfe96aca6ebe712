"""Estimator quality (beyond the paper): cosine and variance of forward-gradient estimates vs K,
against theory; the report section and the figure."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import quality_ratios
from fgrad.analysis.plotting import _new_figure, curve_colors, label_log_y, style_axes
from fgrad.analysis.runs import Excluded, _number, init_of, inputs_of, load_quality
from fgrad.analysis.tables import INIT_WORDS, INPUT_WORDS, NA, excluded_lines, fmt, markdown_table

QUALITY_FORMULAS = (
    "Theory (`fgrad/lab/run/estimator_quality.py`; ∇ is the exact gradient on one fixed "
    "minibatch, with n entries; g an estimate from K tangents v with i.i.d. zero-mean "
    "unit-variance entries): "
    "for the mean of K estimates, Var[g_i] = (‖∇‖² + ∇_i²) / K with normal v and "
    "(‖∇‖² − ∇_i²) / K with Rademacher v, so the mean over the n entries is "
    "(‖∇‖² ± ‖∇‖²/n) / K. With normal v the whole law of cos²(g, ∇) is known: "
    "Beta(K/2, (n−1)/2) for the mean (E[cos²] = K / (n + K − 1)) and Beta(K/2, (n−K)/2) for "
    "the projection of ∇ onto span(v_1..v_K) (E[cos²] = K / n); each setting's M values are "
    "tested against it (Kolmogorov–Smirnov statistic D and p-value). With Rademacher v, "
    "E[cos²] ≈ K / (n + K − 1) (n ≫ K) and no law is tested; no theory is given for the "
    "projection's variance or for Rademacher projections (n/a). E[cos²] is measured over M "
    "estimates, ± its standard error; RSE is that error relative to the measurement.")

# ----------------------------------------------------------------------------- section


def _cos2_error(row: dict[str, Any]) -> float:
    """Standard error of the measured E[cos²] (from the row's M cosines)."""
    cos2 = np.asarray(row["cosine"], np.float64) ** 2
    return float(np.std(cos2, ddof=1) / math.sqrt(cos2.size)) if cos2.size > 1 else math.nan


def _rse(row: dict[str, Any]) -> float:
    """Relative standard error of the measured E[cos²]."""
    return _cos2_error(row) / row["cos2_mean"]


def _law_cell(row: dict[str, Any]) -> str:
    """``Beta(a, b): D = …, p = …`` of the row's Kolmogorov–Smirnov test, or n/a."""
    if row.get("ks_D") is None:
        return NA
    a, b = row["cos2_law"]
    return f"Beta({a:g}, {b:.6g}): D = {row['ks_D']:.3f}, p = {row['ks_p']:.2g}"


def _quality_row(row: dict[str, Any]) -> list[str]:
    r_cos, r_var = quality_ratios(row)
    numbers = (_number(row["cos2_theory"]), r_cos, _number(row["var_mean"]),
               _number(row["var_theory"]), r_var)
    return [str(row["point"]), str(row["distribution"]), str(row["combine"]),
            str(row["num_tangents"]), str(row["samples"]),
            f"{row['cos2_mean']:.3g} ± {_cos2_error(row):.2g}", f"{100 * _rse(row):.1f} %",
            *(fmt(v, missing=NA) for v in numbers[:2]), _law_cell(row),
            *(fmt(v, missing=NA) for v in numbers[2:])]


QUALITY_HEADER = ("point", "distribution", "combine", "K", "M", "E[cos²], measured ± s.e.",
                  "RSE", "E[cos²], theory", "measured / theory", "law of cos² (KS test)",
                  "mean Var[g_i], measured", "mean Var[g_i], theory", "measured / theory")
LAW_ALPHA = 0.01  # the level at which a Kolmogorov–Smirnov test counts as a rejection
TARGET_RSE = 0.05


def _range_text(values: Sequence[float]) -> str:
    return f"{min(values):.3g} to {max(values):.3g} (median {float(np.median(values)):.3g})"


def _quality_sentence(rows: Sequence[dict[str, Any]]) -> str:
    """Measured/theory ranges and how many E[cos²] theories lie within 2 standard errors."""
    pairs = [(quality_ratios(r), r) for r in rows]
    cos = [(c, r) for (c, _), r in pairs if c is not None]
    var = [v for (_, v), _ in pairs if v is not None]
    if not cos and not var:
        return "No setting has a theoretical value to compare with."
    parts = []
    if cos:
        near = sum(abs(r["cos2_mean"] - r["cos2_theory"]) <= 2 * _cos2_error(r) for _, r in cos)
        parts.append(f"E[cos²] measured / theory is {_range_text([c for c, _ in cos])}; the "
                     f"theory lies within 2 standard errors of the measurement in {near} of "
                     f"{len(cos)} settings")
    rse = [_rse(r) for r in rows]
    parts.append(f"the relative standard error of E[cos²] is ≤ {100 * TARGET_RSE:g} % in "
                 f"{sum(x <= TARGET_RSE for x in rse)} of {len(rse)} settings (largest "
                 f"{100 * max(rse):.1f} %)")
    tested = [r for r in rows if r.get("ks_p") is not None]
    if tested:
        kept = sum(r["ks_p"] >= LAW_ALPHA for r in tested)
        parts.append(f"the Beta law of cos² is not rejected at the {LAW_ALPHA:g} level in "
                     f"{kept} of {len(tested)} normal-tangent settings (D ≤ "
                     f"{max(r['ks_D'] for r in tested):.3f})")
    if var:
        parts.append(f"mean Var[g_i] measured / theory is {_range_text(var)}")
    return "**Summary.** " + "; ".join(parts) + "."


def _quality_setup(summary: dict[str, Any]) -> str:
    rows, cfg = summary["rows"], summary.get("config") or {}
    samples = "/".join(str(m) for m in sorted({int(r["samples"]) for r in rows}))
    n = "/".join(str(v) for v in sorted({int(r["n"]) for r in rows}))
    return (f"n = {n} parameters; M = {samples} estimates per setting (column M) on one "
            f"minibatch of {cfg.get('batch_size', '?')}; *init*: at initialisation, *trained*: "
            "after "
            f"{cfg.get('train_steps', '?')} backprop SGD steps (η = {cfg.get('train_lr', '?')}). "
            f"Inputs: {INPUT_WORDS.get(inputs_of(cfg), inputs_of(cfg))}; "
            f"{INIT_WORDS.get(init_of(cfg), init_of(cfg))}.")


def estimator_quality_section(exp_dir: Path) -> list[str]:
    """Markdown body for the estimator-quality experiment: the formulas, one table per model."""
    models, excluded = load_quality(exp_dir)
    if not models and not excluded:
        return []
    lines = [QUALITY_FORMULAS]
    for model, summary in models.items():
        lines += ["", f"### {model}", "", _quality_setup(summary), ""]
        lines += markdown_table(QUALITY_HEADER, [_quality_row(r) for r in summary["rows"]])
        lines += ["", _quality_sentence(summary["rows"])]
    return lines + excluded_lines(excluded)


# ----------------------------------------------------------------------------- figure

POINT_MARKERS = {"init": "o", "trained": "s"}
POINT_LABELS = {"init": "at initialisation", "trained": "after training"}


def _estimators(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(distribution, combine) → colour, in the rows' order."""
    kinds = list(dict.fromkeys((r["distribution"], r["combine"]) for r in rows))
    return curve_colors([(k, "forward") for k in kinds])


def _cos2_panel(ax: Axes, rows: Sequence[dict[str, Any]], colors: dict[Hashable, str]) -> None:
    """E[cos²] vs K (log-log): measured markers per point, theory dashed per estimator."""
    for (dist, combine), color in colors.items():
        mine = [r for r in rows if (r["distribution"], r["combine"]) == (dist, combine)]
        theory = sorted({(r["num_tangents"], r["cos2_theory"]) for r in mine
                         if r["cos2_theory"] is not None})
        if theory:
            ax.plot(*zip(*theory), "--", color=color, lw=1.0)
        for point, marker in POINT_MARKERS.items():
            pts = sorted((r["num_tangents"], r["cos2_mean"]) for r in mine if r["point"] == point)
            if pts:
                ax.plot(*zip(*pts), marker, color=color, ms=5, mfc=color if point == "init"
                        else "none", label=f"{dist}/{combine}" if point == "init" else None)
    for point, marker in POINT_MARKERS.items():
        ax.plot([], [], marker, color="black", mfc="black" if point == "init" else "none",
                label=f"measured, {point}")
    ax.plot([], [], "--", color="black", label="theory")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ks = sorted({r["num_tangents"] for r in rows})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_formatter(NullFormatter())  # the Ks only
    label_log_y(ax)  # theory and measurements span under a few decades: label 2× and 5×


def _cosine_boxes(ax: Axes, rows: Sequence[dict[str, Any]], colors: dict[Hashable, str]) -> None:
    """Boxes of the M cosines per K, one per estimator side by side (whiskers 1.5 IQR)."""
    ks = sorted({r["num_tangents"] for r in rows})
    width = 0.8 / len(colors)
    for j, (kind, color) in enumerate(colors.items()):
        mine = {r["num_tangents"]: r["cosine"] for r in rows
                if (r["distribution"], r["combine"]) == kind}
        pos = [i + (j - (len(colors) - 1) / 2) * width for i, k in enumerate(ks) if k in mine]
        if not pos:
            continue
        ax.boxplot([mine[k] for k in ks if k in mine], positions=pos, widths=0.85 * width,
                   patch_artist=True, boxprops={"facecolor": color, "alpha": 0.5},
                   medianprops={"color": "black"}, flierprops={"ms": 2},
                   manage_ticks=False)
        ax.plot([], [], "s", color=color, alpha=0.5, label=f"{kind[0]}/{kind[1]}")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])


def plot_quality(models: tuple[dict[str, dict[str, Any]], list[Excluded]], name: str
                 ) -> Figure | None:
    """Estimator quality, one row per model: E[cos²] vs K against theory, and the distribution
    of the cosine per K at each parameter point."""
    by_model = models[0]
    if not by_model:
        return None
    points = list(dict.fromkeys(r["point"] for s in by_model.values() for r in s["rows"]))
    fig, axes = _new_figure(len(by_model), 1 + len(points))
    for row, (model, summary) in zip(axes, by_model.items()):
        rows = summary["rows"]
        colors = _estimators(rows)
        _cos2_panel(row[0], rows, colors)
        style_axes(row[0], "K (tangents)", "E[cos²(estimate, ∇)]",
                   f"{model}: E[cos²] vs K (n = {rows[0]['n']})")
        for ax, point in zip(row[1:], points):
            mine = [r for r in rows if r["point"] == point]
            _cosine_boxes(ax, mine, colors)
            ms = "/".join(str(m) for m in sorted({int(r["samples"]) for r in mine}, reverse=True))
            style_axes(ax, "K (tangents)", "cos(estimate, ∇)",
                       f"{model}: cosine {POINT_LABELS.get(point, point)} (M = {ms})",
                       logy=True)
    fig.suptitle(f"{name}: forward-gradient estimates against the exact gradient (markers: "
                 "measured; dashed: theory)", fontsize=11)
    return fig


FAMILY = Family(section=estimator_quality_section, load=load_quality, draw=plot_quality)
