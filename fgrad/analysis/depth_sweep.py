"""Depth sweep (paper Figure 6): runtime cost and memory vs MLP depth.

The report section (one table per batch size and a generated summary), the figure, and the
sweep's own Markdown file ``depth_sweep.md`` (:func:`depth_markdown`, every row with the
parameter-sized memory) and progress line (:func:`depth_line`). The report's tables read
:func:`depth_series`; both use :func:`fgrad.analysis.tables.markdown_table`
and the formatters there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import METHOD_LABELS, MIB
from fgrad.analysis.plotting import COLORS, _new_figure, style_axes
from fgrad.analysis.runs import load_depth_sweep
from fgrad.analysis.tables import NA, fmt, markdown_table, mib

# For the depth-sweep section, when its experiment exists: R_f ≈ 2.5 → 4.2 and R_b ≈ 4.5 → 5.0
# from 1 to 100 layers, with equal memory for both methods.
PAPER_DEPTH_SWEEP = {"layers": (1, 100), "R_f": (2.5, 4.2), "R_b": (4.5, 5.0)}
LOW_RANK_COLOR = "#2ca02c"

# ----------------------------------------------------------------------------- section


LOW_RANK_DEPTH_METHOD = "fwd-lowrank-normal-k1-r1"  # the depth sweep's low-rank series


def depth_fwd_method(row: dict[str, Any]) -> str:
    """The forward-gradient entry of a depth-sweep row (normal tangents, K = 1, if present)."""
    fwd = [m for m in row["methods"] if m.startswith("fwd")]
    return "fwd-normal-k1" if "fwd-normal-k1" in fwd else fwd[0]


def depth_series(result: dict[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """Per depth at one batch size: R_f, R_b, both steps' median and quartile times (ms over
    the interleaved rounds: ``f_ms``, ``f_ms_p25``, ``f_ms_p75``, ``b_…``) and memory (MiB);
    with the same for the low-rank step (``R_l``, ``l_…``) where every row has it."""
    rows = sorted((r for r in result["rows"] if r["batch_size"] == batch_size),
                  key=lambda r: r["depth"])

    def get(r: dict[str, Any], method: str, *keys: str) -> float:
        v = r["methods"][method]
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return np.nan if v is None else float(v)

    out = {"depth": np.array([r["depth"] for r in rows], float)}
    series: list[tuple[str, str | None]] = [("f", None), ("b", "backprop")]
    if rows and all(LOW_RANK_DEPTH_METHOD in r["methods"] for r in rows):
        series.append(("l", LOW_RANK_DEPTH_METHOD))  # rank-1 tangents: R_l, l_total, ...
    for label, method in series:
        out[f"R_{label}"] = np.array([get(r, method or depth_fwd_method(r), "R") for r in rows])
        for q in ("ms", "ms_p25", "ms_p75"):
            out[f"{label}_{q}"] = np.array([get(r, method or depth_fwd_method(r), "time", q)
                                            for r in rows])
        for part in ("total", "parameter_sized", "rest"):
            out[f"{label}_{part}"] = np.array(
                [get(r, method or depth_fwd_method(r), "memory", part) for r in rows]) / MIB
    return out


def _cell(value: float, digits: int = 2) -> str:
    """A depth-series value with ``digits`` decimals, "n/a" where it is not finite."""
    return fmt(float(value) if np.isfinite(value) else None, f".{digits}f", NA)


def _depth_row(s: dict[str, np.ndarray], i: int) -> list[str]:
    row = [f"{s['depth'][i]:.0f}", _cell(s["R_f"][i]), _cell(s["R_b"][i]),
           _cell(s["R_f"][i] / s["R_b"][i]), _cell(s["f_total"][i], 1),
           _cell(s["f_rest"][i], 1), _cell(s["b_total"][i], 1), _cell(s["b_rest"][i], 1),
           _cell(s["f_total"][i] / s["b_total"][i])]
    if "R_l" in s:
        row += [_cell(s["R_l"][i]), _cell(s["l_total"][i], 1),
                _cell(s["l_total"][i] / s["b_total"][i])]
    return row


DEPTH_HEADER = ["depth", "R_f", "R_b", "R_f/R_b", "fwd peak (MiB)", "fwd rest (MiB)",
                "bp peak (MiB)", "bp rest (MiB)", "fwd/bp peak"]
LOW_RANK_HEADER = ["R low-rank", "low-rank peak (MiB)", "low-rank/bp peak"]


def _low_rank_sentence(s: dict[str, np.ndarray], batch_size: int) -> str:
    if "R_l" not in s:
        return ""
    ratio = s["l_total"] / s["b_total"]
    below = "at or below" if np.nanmax(ratio) <= 1 else "not always at or below"
    return (f" With rank-1 tangents (normal factors) the step's peak is {below} backprop's at "
            f"every depth at batch {batch_size} ({np.nanmin(ratio):.2f}–{np.nanmax(ratio):.2f}× "
            f"backprop's) and its R is {np.nanmin(s['R_l']):.2f}–{np.nanmax(s['R_l']):.2f}.")


def _depth_sentence(s: dict[str, np.ndarray], batch_size: int) -> str:
    i0 = 1 if len(s["depth"]) > 1 else 0  # growth is measured from depth 2 (the issue's target)
    grow_f, grow_b = s["f_rest"][-1] / s["f_rest"][i0], s["b_rest"][-1] / s["b_rest"][i0]
    ratio = s["f_total"][-1] / s["b_total"][-1]
    d0, d1 = int(s["depth"][i0]), int(s["depth"][-1])
    paper_f, paper_b = PAPER_DEPTH_SWEEP["R_f"], PAPER_DEPTH_SWEEP["R_b"]
    cheaper = "below" if np.nanmax(s["R_f"] / s["R_b"]) < 1 else "not always below"
    return (f"At batch {batch_size}, from depth {d0} to {d1} the memory beyond parameter-sized "
            f"buffers changes {grow_b:.1f}-fold for backprop (stored activations) and "
            f"{grow_f:.2f}-fold for the forward gradient; at depth {d1} the forward-gradient "
            "step's total peak is "
            f"{ratio:.2f}× backprop's (the paper reports equal memory for both). R_f ranges "
            f"{np.nanmin(s['R_f']):.2f}–{np.nanmax(s['R_f']):.2f} and R_b "
            f"{np.nanmin(s['R_b']):.2f}–{np.nanmax(s['R_b']):.2f} (paper: R_f {paper_f[0]} → "
            f"{paper_f[1]}, R_b {paper_b[0]} → {paper_b[1]} from 1 to 100 layers); R_f/R_b is "
            f"{cheaper} 1.")


def depth_sweep_section(exp_dir: Path) -> list[str]:
    """Markdown body for the depth sweep: one table per batch size, and a generated summary."""
    result = load_depth_sweep(exp_dir)
    if result is None:
        return []
    cfg = result.get("config", {})
    lines = [f"MLP of width {cfg.get('width', '?')}, depth = number of hidden layers; R = "
             "median step time / median time of f (interleaved rounds); memory from XLA's "
             "analysis of the compiled step (arguments + outputs − donated + temporaries), "
             "split into parameter-sized buffers (parameters, tangents, gradient, update) and "
             "the rest (activations and working set). The batch is an argument, so the data "
             "set never counts."]
    for b in sorted({r["batch_size"] for r in result["rows"]}):
        s = depth_series(result, b)
        lines += ["", f"### batch {b}", ""]
        header = DEPTH_HEADER + (LOW_RANK_HEADER if "R_l" in s else [])
        lines += markdown_table(header, [_depth_row(s, i) for i in range(len(s["depth"]))])
        lines += ["", _depth_sentence(s, b) + _low_rank_sentence(s, b)]
    return lines


# ----------------------------------------------------------------------------- figure


def plot_depth_sweep(result: dict[str, Any] | None, name: str) -> Figure | None:
    """Depth sweep, one row per batch size: R_f and R_b vs depth, R_f/R_b vs depth, each
    step's total peak memory vs depth (linear, where the methods part), and the memory beyond
    parameter-sized buffers (log: backprop's stored activations grow, forward's do not). The
    low-rank step has no second memory curve: its split assumes a full-size tangent, which it
    never holds, so "beyond parameter-sized" would be an artefact of the estimate."""
    if result is None:
        return None
    batch_sizes = sorted({r["batch_size"] for r in result["rows"]})
    fig, axes = _new_figure(len(batch_sizes), 4)
    for row, b in zip(axes, batch_sizes):
        s = depth_series(result, b)
        lines = [("f", COLORS["forward"], METHOD_LABELS["forward"], "o"),
                 ("b", COLORS["backprop"], METHOD_LABELS["backprop"], "s")]
        if "R_l" in s:
            lines.append(("l", LOW_RANK_COLOR, "low-rank forward gradient (r = 1)", "^"))
        for key, color, label, marker in lines:
            row[0].plot(s["depth"], s[f"R_{key}"], f"{marker}-", color=color, label=label)
            row[2].plot(s["depth"], s[f"{key}_total"], f"{marker}-", color=color, label=label)
            if key != "l":
                row[3].plot(s["depth"], s[f"{key}_rest"], f"{marker}--", color=color,
                            label=label)
        # R_f / R_b = T(fwd step) / T(bp step); bars: the ratio of the steps' quartiles over
        # the interleaved rounds (p25/p75 to p75/p25), the spread of what the median ratio is
        ratio = s["f_ms"] / s["b_ms"]
        err = np.array([ratio - s["f_ms_p25"] / s["b_ms_p75"],
                        s["f_ms_p75"] / s["b_ms_p25"] - ratio])
        row[1].errorbar(s["depth"], ratio, yerr=np.where(np.isfinite(err), err, 0.0), fmt="o-",
                        color="k", capsize=3, label="R_f / R_b (bars: quartile ratios)")
        row[1].axhline(1.0, color="gray", lw=0.8, ls=":")
        for ax in row:  # log x, ticked at the depths tested
            ax.set_xscale("log")
            ax.set_xticks(list(s["depth"]), [str(int(d)) for d in s["depth"]])
            ax.minorticks_off()
        style_axes(row[0], "depth (hidden layers)", "R = step time / time of f",
                   f"batch {b}: runtime cost")
        style_axes(row[1], "depth (hidden layers)", "R_f / R_b", f"batch {b}: relative cost")
        style_axes(row[2], "depth (hidden layers)", "peak memory of a step (MiB)",
                   f"batch {b}: XLA peak memory, total")
        style_axes(row[3], "depth (hidden layers)", "MiB beyond parameter-sized buffers",
                   f"batch {b}: activations and working set", logy=True)
        for ax in row:  # the same curves in every row: one legend per column, in the top row
            if b == batch_sizes[0]:
                ax.legend(fontsize=6.5, loc="upper left", framealpha=0.8)
            elif ax.get_legend() is not None:
                ax.get_legend().remove()
    fig.suptitle(f"{name}: MLP width {result.get('config', {}).get('width', '?')} (R and "
                 "memory from the compiled steps of one benchmark run per batch size)",
                 fontsize=11)
    return fig


FAMILY = Family(section=depth_sweep_section, load=load_depth_sweep, draw=plot_depth_sweep)


# ----------------------------------------------------------------------------- the sweep's files


def depth_line(row: dict[str, Any]) -> str:
    """One progress line of the depth sweep."""
    ms = {n: e.get("time", {}).get("ms") for n, e in row["methods"].items()}
    mem = {n: e["memory"] for n, e in row["methods"].items() if "memory" in e}
    return (f"[depth] B={row['batch_size']} depth={row['depth']}: "
            + ", ".join(f"{n} {fmt(v)} ms" for n, v in ms.items())
            + f"; R_f {fmt(row.get('R_f'))}, R_b {fmt(row.get('R_b'))}; "
            + ", ".join(f"{n} peak {mib(m['total'])} MiB (rest {mib(m['rest'])})"
                        for n, m in mem.items()))


SWEEP_FILE_HEADER = ("B", "depth", "params (MiB)", "R_f", "R_b", "fwd peak", "fwd param-sized",
                     "fwd rest", "bp peak", "bp param-sized", "bp rest", "fwd/bp peak")


def _sweep_file_row(r: dict[str, Any]) -> list[Any]:
    """One row of ``depth_sweep.md``: every (batch size, depth), memory in MiB."""
    fw = r["methods"].get("fwd-normal-k1", {}).get("memory", {})
    bp = r["methods"].get("backprop", {}).get("memory", {})
    memory = [mib(m.get(part)) for m in (fw, bp) for part in ("total", "parameter_sized", "rest")]
    return [r["batch_size"], r["depth"], mib(r["param_bytes"]), fmt(r.get("R_f")),
            fmt(r.get("R_b")), *memory, fmt(r.get("fwd_over_bp_total"), ".2f")]


def depth_markdown(result: dict[str, Any]) -> str:
    """Markdown table of the depth sweep."""
    env = result["env"]
    lines = [f"# MLP depth sweep (width {result['config']['width']}): {env.get('device')}", "",
             f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}; XLA_FLAGS "
             f"`{env.get('xla_flags') or '(none)'}`. Peak = XLA memory analysis of the compiled "
             "step (arguments + outputs − donated + temporaries); rest = what the batch adds "
             "(peak(B) − peak(B/2), scaled to B: activations, working set, the batch); "
             "param-sized = peak − rest (parameters, tangents, gradient, update). MiB.", ""]
    lines += markdown_table(SWEEP_FILE_HEADER, [_sweep_file_row(r) for r in result["rows"]])
    return "\n".join(lines) + "\n"
