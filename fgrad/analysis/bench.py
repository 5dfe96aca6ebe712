"""The step benchmark's Markdown file and progress line (from the result of
:func:`fgrad.lab.run.bench.run_bench`): machine and versions, the per-method table, the loop-style
check."""

from __future__ import annotations

from typing import Any

from fgrad.analysis.tables import DASH, fmt, markdown_table, mib

BENCH_HEADER = ("model", "B", "loop", "method", "ms/step", "R", "vs bp", "sampling ms (share)",
                "GFLOP", "FLOP vs bp", "GFLOP/s", "compile s", "XLA peak MiB")
LOOP_HEADER = ("model", "B", "method", "python", "scan (S)", "fastest", "training uses",
               "training / fastest")


def case_line(case: dict[str, Any]) -> str:
    """One progress line: the headline ms/step of each method of a case."""
    parts = [f"{n} {r['ms']:.3g}" for n, r in case["methods"].items()]
    return (f"[bench] {case['model']} B={case['batch_size']} ({case['headline_loop']}, "
            f"{case['wall_s']:.0f} s): " + ", ".join(parts) + " ms")


def _method_rows(case: dict[str, Any]) -> list[list[Any]]:
    """The table rows of a case's f and training steps (sampling alone is a column)."""
    per, ratios = case["methods"], case["ratios"]
    f_ms, bp_ms = per.get("f", {}).get("ms"), per.get("backprop", {}).get("ms")
    bp_flops = per.get("backprop", {}).get("flops")
    rows = []
    for name, row in per.items():
        if row["kind"] == "sample":
            continue
        sample = per.get(name.replace("fwd-", "sample-", 1)) if name.startswith("fwd-") \
            else None
        share = ratios.get(name, {}).get("sampling_share")
        samp = DASH if sample is None else f"{sample['ms']:.3g} ({100 * share:.0f} %)"
        rows.append([case["model"], case["batch_size"], row["loop"], name, f"{row['ms']:.3g}",
                     fmt(row["ms"] / f_ms if f_ms else None),
                     fmt(row["ms"] / bp_ms if bp_ms else None), samp, fmt(row["gflops"]),
                     fmt(row["flops"] / bp_flops if row.get("flops") and bp_flops else None),
                     fmt(row["gflops_per_s"], ".1f"),
                     fmt(row["compile_s"].get(row["loop"]), ".2f"),
                     mib(row["memory"].get("peak_estimate"))])
    return rows


def _loop_row(c: dict[str, Any], name: str, v: dict[str, Any]) -> list[Any]:
    return [c["model"], c["batch_size"], name, f"{v['python_ms']:.3g}",
            f"{v['scan_ms']:.3g} ({c['scan_steps']})", v["fastest"], v["training_loop"],
            f"{v['training_over_fastest']:.2f}"]


def bench_markdown(result: dict[str, Any]) -> str:
    """The Markdown report of :func:`fgrad.lab.run.bench.run_bench`: machine and versions, the
    per-method table, and the loop-style check."""
    env = result["env"]
    lines = [
        f"# Step benchmark: {env.get('device')}",
        "",
        f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax {env.get('flax')}, "
        f"optax {env.get('optax')}, numpy {env.get('numpy')}, Python {env.get('python')}; "
        f"{env.get('cpu_cores')} CPU cores ({env.get('cpu')}); date {env.get('date')}.",
        f"XLA_FLAGS: `{env.get('xla_flags') or '(none)'}`.",
        "",
        "Median per-step wall time over interleaved rounds, in the loop style the training loop "
        "uses (python: one jitted step per call; scan: S steps per call). R = T/T(f); "
        "vs bp = T/T(backprop step); sampling = drawing that step's tangents alone (share of "
        "the step); fwd-lowrank-… rows use rank-r tangents V = ABᵀ/√r for every kernel; "
        "activity-… rows perturb the pre-activations (Ren et al. 2023: one jvp of the "
        "per-example losses, then a local product per layer, which stores each layer's input "
        "as backprop does). FLOPs "
        "from XLA's cost analysis (FLOP vs bp: the step's over the backprop step's); memory "
        "from XLA's memory analysis of the "
        "compiled step (arguments + outputs − donated + temporaries).",
        "",
    ]
    lines += markdown_table(BENCH_HEADER, [row for case in result["cases"]
                                           for row in _method_rows(case)])
    lines += ["", "Process peak RSS per case (whole process: runtime, all methods): " + ", ".join(
        f"{c['model']}/B={c['batch_size']} {mib(c['process_peak_rss'])} MiB"
        + ("" if c.get("device_peak") is None else f" (device {mib(c['device_peak'])} MiB)")
        for c in result["cases"]) + "."]
    checks = [(c, n, v) for c in result["cases"] for n, v in c["loop_check"].items()]
    if checks:
        lines += ["", "## Loop style: Python loop vs lax.scan (ms/step)", ""]
        lines += markdown_table(LOOP_HEADER, [_loop_row(*check) for check in checks])
    return "\n".join(lines + _conv_lines(result["cases"])) + "\n"


def _conv_lines(cases: list[dict[str, Any]]) -> list[str]:
    """The convolutions-by-part section (:mod:`fgrad.lab.conv_parts`), if any case has it."""
    rows = [[c["model"], c["batch_size"], f"{'×'.join(map(str, conv['input'][1:]))} → "
             f"{conv['kernel'][-1]}", name, f"{p['ms']:.3g}", fmt(p["gflops_per_s"], ".1f"),
             fmt(p["rate_vs_forward"], ".2f"),
             fmt(p.get("max_rel_err"), ".1e") if "max_rel_err" in p else DASH]
            for c in cases for conv in c.get("conv_parts", []) for name, p in conv["parts"].items()]
    if not rows:
        return []
    return ["", "## Convolutions by part: what bounds the CNN's backprop step", "",
            "Each distinct convolution of the model (input H×W×C_in → C_out, 3×3 kernel), its "
            "three backprop parts as XLA compiles them for `jax.vjp`, and two rewrites of the "
            "kernel gradient as matrix products (fgrad/lab/conv_parts.py); medians over "
            "interleaved rounds. rate vs fwd: the part's FLOP rate (XLA's count over its time) "
            "over the forward convolution's; rel. err: max deviation from XLA's kernel gradient "
            "over its largest entry. A backprop step does not compute the first convolution's "
            "input gradient.", ""] + markdown_table(
        ("model", "B", "convolution", "part", "ms", "GFLOP/s", "rate vs fwd", "rel. err"), rows)
