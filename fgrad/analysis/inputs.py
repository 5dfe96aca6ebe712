"""The input-scaling record (``experiments/input_scaling.py``): the MLP pair on x/255 pixels
beside the same pair on standardised pixels, read from the sibling ``mlp`` folder at the same
η₀ and seeds. Report section: a row per (input convention, method); figure: training loss and
test accuracy against iterations, colour by method, line style by input convention."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from fgrad.analysis.family import Family
from fgrad.analysis.metrics import (
    METHOD_LABELS,
    METHODS,
    SMOOTH_WINDOW,
    aggregate,
    seed_metrics,
    smoothed_loss,
)
from fgrad.analysis.plotting import COLORS, _new_figure, _stack, _thin, legend_below, style_axes
from fgrad.analysis.runs import Excluded, MnistRun, load_mnist_runs
from fgrad.analysis.tables import (
    INPUT_WORDS,
    excluded_lines,
    format_stat,
    markdown_table,
    setup_line,
)

PAIR_WITH = "mlp"  # the experiment whose standardised runs the x/255 pair is read beside
ORDER = ("standardize", "unit")
STYLES = {"standardize": "-", "unit": "--"}


def load(exp_dir: Path) -> tuple[list[MnistRun], list[Excluded]]:
    """This folder's runs, plus the sibling ``mlp`` runs at the same η₀ and seeds in the other
    input convention (complete runs only; the excluded of both)."""
    runs, excluded = load_mnist_runs(exp_dir)
    other = exp_dir.parent / PAIR_WITH
    if runs and other.is_dir():
        more, more_excluded = load_mnist_runs(other)
        keys = {(r.learning_rate, r.seed) for r in runs}
        mine = {r.inputs for r in runs}
        runs += [r for r in more if (r.learning_rate, r.seed) in keys and r.inputs not in mine]
        excluded += [e for e in more_excluded if (e.summary.get("learning_rate"),
                                                 e.summary.get("seed")) in keys]
    return runs, excluded


def _by(runs: list[MnistRun]) -> dict[str, dict[int, dict[str, MnistRun]]]:
    """Runs by input convention, seed and method."""
    out: dict[str, dict[int, dict[str, MnistRun]]] = {}
    for r in runs:
        out.setdefault(r.inputs, {}).setdefault(r.seed, {})[r.method] = r
    return {k: out[k] for k in sorted(out, key=lambda k: (ORDER + (k,)).index(k))}


def rows(runs: list[MnistRun]) -> list[list[str]]:
    """A table row per (input convention, method): seeds, final loss and test accuracy, and
    forward's iterations to its own convention's backprop's best loss ÷ backprop's."""
    out = []
    for inputs, seeds in _by(runs).items():
        ratio = aggregate(seed_metrics(s.get("forward"), s.get("backprop"))["step_f/step_b"]
                          if "forward" in s and "backprop" in s else None
                          for s in seeds.values())
        for method in METHODS:
            rs = [s[method] for s in seeds.values() if method in s]
            if not rs:
                continue
            out.append([INPUT_WORDS.get(inputs, inputs).split(" (")[0], METHOD_LABELS[method],
                        str(len(rs)),
                        format_stat(aggregate(r.summary.get("final_train_loss") for r in rs)),
                        format_stat(aggregate((r.summary.get("final_eval") or {})
                                              .get("test_acc") for r in rs)),
                        format_stat(ratio) if method == "forward" else ""])
    return out


HEADER = ("inputs", "method", "seeds", "final training loss", "final test accuracy",
          "iterations to backprop's best loss, forward ÷ backprop")


def _sentence(runs: list[MnistRun]) -> str:
    by = _by(runs)
    if not {"standardize", "unit"} <= set(by):
        return ("Only one input convention has complete runs here, so the two are not "
                "compared yet.")
    parts = []
    for inputs in ("standardize", "unit"):
        seeds = by[inputs]
        loss = {m: aggregate(s[m].summary.get("final_train_loss") for s in seeds.values()
                             if m in s) for m in METHODS}
        acc = {m: aggregate((s[m].summary.get("final_eval") or {}).get("test_acc")
                            for s in seeds.values() if m in s) for m in METHODS}
        if any(v is None for v in (*loss.values(), *acc.values())):
            continue
        parts.append(f"on {INPUT_WORDS[inputs].split(' (')[0]} forward gradient ends at "
                     f"training loss {loss['forward'].mean:.3g} and test accuracy "
                     f"{acc['forward'].mean:.3g}, backprop at {loss['backprop'].mean:.3g} and "
                     f"{acc['backprop'].mean:.3g}")
    if len(parts) < 2:
        return ""
    return ("**Summary.** With everything else the same (η₀, seeds, batches, initial "
            f"parameters), {parts[0]}; {parts[1]} ({len(by['unit'])} seed(s) each). The input "
            "convention alone moves both methods; a comparison of the two made in one "
            "convention says nothing about the other.")


def section(exp_dir: Path) -> list[str]:
    """Markdown body: the table of both conventions and what it shows."""
    runs, excluded = load(exp_dir)
    if not runs:
        return ["No complete runs.", *excluded_lines(excluded)] if excluded else []
    lines = [f"{setup_line(runs)} The standardised runs are the `{PAIR_WITH}` experiment's "
             "(same η₀, seeds and everything else); the x/255 runs are this folder's. "
             "Iterations to backprop's best loss: the first step at which forward gradient's "
             f"training loss (mean of {SMOOTH_WINDOW} steps) falls to the lowest value "
             "backprop's reaches in the same convention and seed, over backprop's own step "
             "(∞ counts as not reached).", ""]
    lines += markdown_table(HEADER, rows(runs))
    sentence = _sentence(runs)
    return lines + (["", sentence] if sentence else []) + excluded_lines(excluded)


def draw(data: tuple[list[MnistRun], list], name: str) -> Figure | None:
    """Training loss and test accuracy against iterations, both conventions."""
    runs, _ = data
    if not runs:
        return None
    fig, axes = _new_figure(1, 2)
    for inputs, seeds in _by(runs).items():
        for method in METHODS:
            rs = [s[method] for _, s in sorted(seeds.items()) if method in s]
            if not rs:
                continue
            label = (f"{METHOD_LABELS[method]}, {INPUT_WORDS[inputs].split(' (')[0]}"
                     f" ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
            sm = [smoothed_loss(r) for r in rs]
            idx = _thin(len(sm[0][0]))
            kw = {"color": COLORS[method], "ls": STYLES.get(inputs, ":")}
            axes[0, 0].plot(sm[0][0][idx], _stack([s[2] for s in sm]).mean(0)[idx], lw=1.3,
                            label=label, **kw)
            axes[0, 1].plot(rs[0].eval_step, _stack([r.test_acc for r in rs]).mean(0),
                            lw=1.3, marker="o", ms=2.5, label=label, **kw)
    style_axes(axes[0, 0], "iteration", f"training loss (mean of {SMOOTH_WINDOW} steps)",
               "training loss vs iterations")
    style_axes(axes[0, 1], "iteration", "test accuracy", "test accuracy vs iterations")
    legend_below(fig, axes[0, 0], ncol=2)
    lr = runs[0].learning_rate
    fig.suptitle(f"{name}: MLP, η₀ = {lr:g}, solid: standardised inputs, dashed: x/255 "
                 "(mean over seeds)", fontsize=10)
    return fig


FAMILY = Family(section=section, load=load, draw=draw)
