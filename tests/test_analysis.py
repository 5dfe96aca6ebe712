"""Figures and REPORT.md (fgrad.analysis) from small synthetic results folders."""

import json
from pathlib import Path

import numpy as np
import pytest

from fgrad._results import ResultsError, write_json
from fgrad.analysis.figures import make_figures
from fgrad.analysis.report import report_markdown, write_report
from fgrad.lab import registry

# The report's sections, as make reproduce builds them from the experiment registry.
SECTIONS = registry.sections(list(registry.experiments()), "cpu")
WINDOW = 100
STEPS = 300
ENV = {"platform": "cpu", "device": "cpu (2 cores, Test CPU)", "cpu": "Test CPU",
       "cpu_cores": 2, "jax": "9.9.1", "jaxlib": "9.9.2", "flax": "9.9.3", "optax": "9.9.4",
       "date": "2030-01-02T03:04:05+00:00"}
# Per (method, seed): seconds per step, T(f) in ms, loss decay time constant (steps).
RUNS = {("forward", 0): (0.002, 0.50, 60.0), ("backprop", 0): (0.003, 0.55, 150.0),
        ("forward", 1): (0.0021, 0.52, 70.0), ("backprop", 1): (0.0032, 0.50, 140.0)}
LR = 2e-4


def _curves(method, seed):
    sec, _, tau = RUNS[(method, seed)]
    steps = np.arange(1, STEPS + 1)
    noise = 0.02 * np.random.default_rng(seed * 7 + len(method)).standard_normal(STEPS)
    return steps, 0.3 + 2.0 * np.exp(-steps / tau) + noise, sec * steps


def _write_run(exp_dir: Path, name: str, loss: np.ndarray, times: np.ndarray, acc: float,
               summary: dict, extra_rows: tuple = ()) -> None:
    """A complete run's JSONL log (evaluations at step 0 and the end, a training row per step,
    ``extra_rows``) and its summary (``summary`` plus final loss and evaluation)."""
    rows = [{"kind": "eval", "step": 0, "time": 0.0, "test_loss": 2.3, "test_acc": 0.1}]
    rows += [{"kind": "train", "step": i + 1, "loss": float(v), "time": float(t)}
             for i, (v, t) in enumerate(zip(loss, times))]
    rows += list(extra_rows)
    rows.append({"kind": "eval", "step": len(loss), "time": float(times[-1]), "test_loss": 0.5,
                 "test_acc": acc})
    (exp_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(exp_dir / f"{name}.json", {
        **summary, "status": "complete", "steps": len(loss), "steps_done": len(loss),
        "final_train_loss": float(loss[-100:].mean()), "final_eval": rows[-1]})


def _write_mnist_run(exp_dir: Path, method: str, seed: int) -> None:
    sec, f_ms, _ = RUNS[(method, seed)]
    _, loss, times = _curves(method, seed)
    acc = 0.8 + 0.01 * seed + (0.05 if method == "backprop" else 0.0)
    _write_run(exp_dir, f"{method}_lr{LR:g}_seed{seed}", loss, times, acc, {
        "experiment": "mlp", "model": "mlp", "method": method, "learning_rate": LR,
        "seed": seed, "config": {"batch_size": 64}, "env": ENV, "ms_per_step": 1e3 * sec,
        "f_ms": f_ms, "memory": {"step_xla": {"peak_estimate": (100 + seed) * 2**20},
                                 "data_bytes": 40 * 2**20,
                                 "process_peak_rss": 2**30, "device_peak": None}})


def _write_bad_runs(exp_dir: Path) -> None:
    """Seed 2: forward diverged, backprop interrupted (no log): both must be left out."""
    base = {"experiment": "mlp", "model": "mlp", "learning_rate": LR, "seed": 2,
            "steps": STEPS, "env": ENV}
    write_json(exp_dir / f"forward_lr{LR:g}_seed2.json",
               {**base, "method": "forward", "status": "diverged", "steps_done": 17,
                "diverged_step": 17, "ms_per_step": 999.0, "f_ms": 1.0})
    write_json(exp_dir / f"backprop_lr{LR:g}_seed2.json",
               {**base, "method": "backprop", "status": "incomplete", "steps_done": 40})


def _write_trajectories(exp_dir: Path) -> None:
    rng = np.random.default_rng(0)
    minima = {"beale": (3.0, 0.5), "rosenbrock": (1.0, 1.0)}
    for fn, minimum in minima.items():
        for method, us in (("forward", 3.0), ("backprop", 5.0)):
            path = np.linspace((0.0, 0.5), minimum, 101) + 0.01 * rng.standard_normal((2, 101, 2))
            f = np.exp(-np.arange(101) / 20.0)[None] * (1 + 0.1 * rng.random((2, 1)))
            time = np.array([[0.0, 1e-4, 2e-4], [0.0, 1.1e-4, 2.1e-4]])
            np.savez_compressed(exp_dir / f"{fn}_{method}.npz", f=f.astype(np.float32),
                                x=path.astype(np.float32), time=time,
                                time_steps=np.array([0, 50, 100]))
            final = f[:, -1].astype(np.float64)
            write_json(exp_dir / f"{fn}_{method}.json", {
                "experiment": "test_functions", "function": fn, "method": method,
                "status": "complete", "seeds": [0, 1], "env": ENV,
                "config": {"functions": {fn: {"start": (0.0, 0.5), "learning_rate": 0.01,
                                              "steps": 100}}},
                "final_f_mean": final.mean(), "final_f_std": final.std(), "final_f": final,
                "run_time_s_mean": 2e-4, "compile_s_mean": 0.25, "us_per_step": us})


@pytest.fixture
def results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    (out / "mlp").mkdir(parents=True)
    (out / "test_functions").mkdir()
    for method, seed in RUNS:
        _write_mnist_run(out / "mlp", method, seed)
    _write_bad_runs(out / "mlp")
    _write_trajectories(out / "test_functions")
    return out


def _smoothed(method, seed):
    _, loss, times = _curves(method, seed)
    s = np.convolve(loss, np.ones(WINDOW) / WINDOW, mode="valid")
    return times[WINDOW - 1:], s


def _fmt(values):
    return f"{np.mean(values):.4g} ± {np.std(values):.2g}"


def _expected_mnist() -> dict[str, str]:
    """The report's cells for the synthetic MLP runs, computed here independently."""
    per = {k: [] for k in ("R_f", "R_b", "R_f/R_b", "T_f", "T_b", "T_f/T_b", "target")}
    # one T(f) for the section: the median of the complete runs' own measurements
    f_all = [f for (_, f, _) in RUNS.values()]
    f_ms = float(np.median(f_all))
    for seed in (0, 1):
        (sf, _, _), (sb, _, _) = RUNS[("forward", seed)], RUNS[("backprop", seed)]
        r_f, r_b = 1e3 * sf / f_ms, 1e3 * sb / f_ms
        tb_times, sb_loss = _smoothed("backprop", seed)
        tf_times, sf_loss = _smoothed("forward", seed)
        target = sb_loss.min()
        t_b = tb_times[np.argmin(sb_loss)]
        t_f = tf_times[np.flatnonzero(sf_loss <= target)[0]]
        for k, v in (("R_f", r_f), ("R_b", r_b), ("R_f/R_b", sf / sb), ("T_f", t_f),
                     ("T_b", t_b), ("T_f/T_b", t_f / t_b), ("target", target)):
            per[k].append(v)
    # R_f / R_b: the ratio of the mean step times (± the seeds' spread of the ratio)
    sf, sb = (np.mean([RUNS[(m, s)][0] for s in (0, 1)]) for m in ("forward", "backprop"))
    return {**{k: _fmt(v) for k, v in per.items()},
            "R_f/R_b": f"{sf / sb:.4g} ± {np.std(per['R_f/R_b']):.2g}",
            "f_ms": f"{f_ms:.4g} ± {np.std(f_all):.2g}"}


def test_report_shows_the_numbers_of_the_results(results: Path):
    text = write_report(results, SECTIONS, "cpu",
                        "python experiments/reproduce.py --test").read_text()
    assert "`python experiments/reproduce.py --test`" in text
    assert "Test CPU (2 cores)" in text and "jaxlib 9.9.2" in text and "optax 9.9.4" in text
    expected = _expected_mnist()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines}
    for key, label in (("R_f", "R_f = "), ("R_b", "R_b = "), ("R_f/R_b", "R_f / R_b"),
                       ("T_f", "T_f:"), ("T_b", "T_b:"), ("T_f/T_b", "T_f / T_b"),
                       ("target", "backprop's best"), ("f_ms", "T(f)")):
        row = next(v for k, v in rows.items() if k.startswith(label))
        assert expected[key] in row, (key, expected[key], row)
    # The paper's MLP η₀ = 2e-4 figures sit beside the measured ones.
    assert rows["T_f / T_b"].rstrip(" |").endswith("0.229")
    assert rows["R_f = T(fwd-grad step) / T(f)"].rstrip(" |").endswith("2.607")
    # The summary is generated from the numbers: forward reached backprop's best loss faster.
    ratio = float(expected["T_f/T_b"].split(" ± ")[0])
    assert ratio < 1 and f"{1 / ratio:.3g}× faster" in text
    # Diverged and interrupted runs are listed and kept out of the means (ms/step 999).
    assert "forward_lr0.0002_seed2.json`: diverged" in text
    assert "backprop_lr0.0002_seed2.json`: incomplete (40 of 300 steps" in text
    assert f"{np.mean([2.0, 2.1]):.4g} ± {np.std([2.0, 2.1]):.2g}" in rows[
        "forward-gradient step, ms"]
    # Step memory: XLA's peak less the training set (seeds 0, 1 → 60, 61 MiB).
    assert f"| {np.mean([60, 61]):.4g} ± {np.std([60, 61]):.2g} |" in rows[
        "memory of one step beyond the training set (XLA estimate), MiB, forward gradient"]
    # Test functions: final f(x) mean ± std and µs per iteration of each (function, method).
    for fn in ("beale", "rosenbrock"):
        for method, label in (("forward", "forward gradient"), ("backprop", "backprop")):
            s = json.loads((results / "test_functions" / f"{fn}_{method}.json").read_text())
            cell = f"{s['final_f_mean']:.4g} ± {s['final_f_std']:.2g}"
            assert any(r.startswith(f"| {fn} | {label} |") and cell in r
                       and f"| {s['us_per_step']:.4g} |" in r for r in lines)
    # An experiment without a results folder is a "not run" note, not a crash.
    cnn = text.split("## CNN")[1]
    assert "*Not run*" in cnn.split("##")[0]


def test_runs_from_two_machines_get_no_wall_time_ratio(results: Path):
    # Backprop of both seeds rerun on another machine: its wall times cannot be set against
    # forward's, so no T_f/T_b, R_f/R_b or shared T(f); per iteration the steps still compare.
    other = {**ENV, "cpu": "Other CPU"}
    for seed in (0, 1):
        path = results / "mlp" / f"backprop_lr{LR:g}_seed{seed}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "env": other}))
    text = write_report(results, SECTIONS, "cpu", "test").read_text()
    mlp = text.split("## MLP")[1].split("\n## ")[0]
    assert "| R_f / R_b | n/a |" in mlp and "| T_f / T_b | n/a |" in mlp
    assert "T(f): each run's own" in mlp and "CPU Other CPU (2 cores)" in mlp
    assert "ran on different machines, so T_f/T_b is not measured (not judged)" in mlp
    for seed in (0, 1):
        _, sb_loss = _smoothed("backprop", seed)
        _, sf_loss = _smoothed("forward", seed)
        step_f = np.flatnonzero(sf_loss <= sb_loss.min())[0] + WINDOW
        assert f"seed {seed}: wall times not compared" in mlp
        assert f"per iteration: forward at step {step_f:,}" in mlp


def test_figures_are_written_from_the_results(results: Path):
    paths = make_figures(results, SECTIONS)
    names = sorted(p.name for p in paths)
    assert names == ["mlp.pdf", "mlp.png", "test_functions.pdf", "test_functions.png"]
    for p in paths:
        assert p.parent == results / "figures" and p.stat().st_size > 10_000
        assert p.read_bytes()[:4] == (b"\x89PNG" if p.suffix == ".png" else b"%PDF")
    assert "![MLP on MNIST" in report_markdown(results, SECTIONS)


@pytest.mark.parametrize("damage", ["missing_log", "bad_json", "missing_npz"])
def test_missing_or_malformed_results_name_the_file(results: Path, damage: str):
    if damage == "missing_log":
        bad = results / "mlp" / "forward_lr0.0002_seed1.jsonl"
        bad.unlink()
    elif damage == "bad_json":
        bad = results / "mlp" / "backprop_lr0.0002_seed0.json"
        bad.write_text('{"method": "backprop", ')
    else:
        bad = results / "test_functions" / "beale_forward.npz"
        bad.unlink()
    with pytest.raises(ResultsError, match=str(bad)):
        write_report(results, SECTIONS)
    with pytest.raises(ResultsError, match=str(bad)):
        make_figures(results, SECTIONS)


# ----------------------------------------------------------------------------- beyond the paper


def _section(out: Path, name: str) -> str:
    """One section of the report, as Markdown."""
    return report_markdown(out, sections=[s for s in SECTIONS if s.name == name])


def _quality_rows(rng: np.random.Generator) -> list[dict]:
    """Rows as the experiment writes them, cos² drawn from its exact Beta law."""
    from fgrad.lab.run.estimator_quality import cos2_law, law_test
    n, m, rows = 1000, 400, []
    for point in ("init", "trained"):
        for dist, combine in (("normal", "mean"), ("normal", "projection")):
            for k in (1, 4):
                law = cos2_law(n, k, dist, combine)
                cos2 = rng.beta(*law, m)
                cos = np.sqrt(cos2)
                rows.append({"point": point, "distribution": dist, "combine": combine,
                             "num_tangents": k, "n": n, "samples": m, "cosine": cos,
                             "cos_mean": cos.mean(), "cos2_mean": np.mean(cos2),
                             "cos2_theory": law[0] / sum(law), "cos2_law": law,
                             **law_test(cos2, law), "var_mean": rng.uniform(0.5, 2.0) / k,
                             "var_theory": None if combine == "projection" else 1.1 / k,
                             "grad_norm": 1.0})
    return rows


def test_estimator_quality_table_shows_measured_over_theory(tmp_path: Path):
    out = tmp_path / "results"
    (out / "estimator_quality").mkdir(parents=True)
    rows = _quality_rows(np.random.default_rng(0))
    write_json(out / "estimator_quality" / "logreg.json", {
        "experiment": "estimator_quality", "model": "logreg", "status": "complete",
        "config": {"batch_size": 64, "train_steps": 20, "train_lr": 0.05}, "env": ENV,
        "rows": rows})
    text = _section(out, "estimator_quality")
    assert "K / n" in text and "(‖∇‖² + ∇_i²) / K" in text
    for r in rows:
        head = (f"| {r['point']} | {r['distribution']} | {r['combine']} | {r['num_tangents']} "
                f"| {r['samples']} | ")
        line = next(line for line in text.splitlines() if line.startswith(head))
        cells = line.strip("| ").split(" | ")
        assert cells[8] == f"{r['cos2_mean'] / r['cos2_theory']:.3g}", line
        assert cells[9].startswith(f"Beta({r['num_tangents'] / 2:g}, ") and \
            f"p = {r['ks_p']:.2g}" in cells[9], line
        var_ratio = "n/a" if r["var_theory"] is None else f"{r['var_mean'] / r['var_theory']:.3g}"
        assert cells[12] == var_ratio, line
    # Beta samples: the RSE is √(2/(K·M)) ≈ 7 % (K = 1) and 3.5 % (K = 4) with M = 400
    assert "is ≤ 5 % in 4 of 8 settings" in text
    assert "normal-tangent settings" in text
    assert [p.name for p in make_figures(out, SECTIONS)] == ["estimator_quality.png",
                                                   "estimator_quality.pdf"]


SWEEP_STEPS = 100
# (variant, method, η₀) → final loss level of seeds 0 and 1; None: that seed diverged.
SWEEP = {("forward-sgd", "forward", 1e-4): (2.0, 2.1), ("forward-sgd", "forward", 1e-3): (1.5, 1.7),
         ("forward-sgd", "forward", 3e-3): (1.2, None),
         ("backprop-sgd", "backprop", 1e-3): (1.4, 1.5),
         ("backprop-sgd", "backprop", 1e-2): (0.6, 0.5),
         ("backprop-sgd", "backprop", 1e-1): (0.8, 0.7)}


def _write_sweep_run(exp_dir: Path, variant: str, method: str, lr: float, seed: int,
                     level: float, cosine: bool = False) -> None:
    steps = np.arange(1, SWEEP_STEPS + 1)
    loss = level + 0.5 * np.exp(-steps / 20.0)
    diag = [{"kind": "diag", "step": int(s), "cosine": 0.01 * (1 + seed) * s / SWEEP_STEPS,
             "norm_ratio": 30.0, "directional_derivative": -1.0}
            for s in (1, 51)] if cosine else []
    _write_run(exp_dir, f"{variant}_lr{lr:g}_seed{seed}", loss, 0.01 * steps, 0.9 - level / 10,
               {"experiment": exp_dir.name, "model": "mlp", "method": method,
                "variant": variant, "learning_rate": lr, "seed": seed, "env": ENV,
                "config": {"batch_size": 64, "optimizer": "sgd", "diagnostics_every": 50},
                "ms_per_step": 10.0, "f_ms": 2.0}, tuple(diag))


def test_lr_sweep_picks_the_lowest_final_loss_among_complete_rates(tmp_path: Path):
    exp_dir = tmp_path / "results" / "lr_sweep"
    exp_dir.mkdir(parents=True)
    finals: dict[str, dict[float, list[float]]] = {}
    failed = set()
    for (variant, method, lr), levels in SWEEP.items():
        for seed, level in enumerate(levels):
            name = f"{variant}_lr{lr:g}_seed{seed}.json"
            if level is None:  # low "final loss" of a diverged run: must not make it the best
                write_json(exp_dir / name, {
                    "method": method, "variant": variant, "learning_rate": lr, "seed": seed,
                    "status": "diverged", "steps": SWEEP_STEPS, "steps_done": 17,
                    "diverged_step": 17, "final_train_loss": 0.01, "config": {}})
                failed.add((variant, lr))
                continue
            _write_sweep_run(exp_dir, variant, method, lr, seed, level)
            loss = json.loads((exp_dir / name).read_text())["final_train_loss"]
            finals.setdefault(variant, {}).setdefault(lr, []).append(loss)
    best = {v: min((lr for lr in by_lr if (v, lr) not in failed),
                   key=lambda lr: np.mean(by_lr[lr])) for v, by_lr in finals.items()}
    assert best == {"forward-sgd": 1e-3, "backprop-sgd": 1e-2}
    text = _section(exp_dir.parent, "lr_sweep")
    kept = finals["forward-sgd"][3e-3][0]  # the diverged seed is shown but not averaged
    assert f"| forward-sgd | sgd | 0.003 | {kept:.4g} | 0.78 | seed 1 diverged at step 17 |" in text
    for variant, lr in best.items():
        label = "forward gradient" if variant.startswith("forward") else "backprop"
        mean = np.mean(finals[variant][lr])
        assert f"| {variant} | {label} | sgd | {lr:g} | {mean:.4g} ± " in text
    assert "understates backprop's advantage" in text  # loss ratio ≈ 1.1 at 1e-3, ≈ 2.6 at best
    assert [p.name for p in make_figures(exp_dir.parent, SECTIONS)] == ["lr_sweep.png",
                                                                       "lr_sweep.pdf"]


def test_k_sweep_renders_a_figure_and_the_logged_cosine(tmp_path: Path):
    exp_dir = tmp_path / "results" / "k_sweep"
    exp_dir.mkdir(parents=True)
    _write_sweep_run(exp_dir, "backprop", "backprop", 2e-4, 0, 0.5)
    for seed in (0, 1):
        _write_sweep_run(exp_dir, "fg-normal-K4-mean", "forward", 2e-4, seed, 1.0, cosine=True)
    paths = make_figures(exp_dir.parent, SECTIONS)
    assert [p.name for p in paths] == ["k_sweep.png", "k_sweep.pdf"]
    assert paths[0].stat().st_size > 10_000
    cos = [0.01 * (1 + seed) * s / SWEEP_STEPS for seed in (0, 1) for s in (1, 51)]
    seed_means = [np.mean(cos[:2]), np.mean(cos[2:])]
    row = next(line for line in _section(exp_dir.parent, "k_sweep").splitlines()
               if line.startswith("| fg-normal-K4-mean |"))
    assert row.endswith(f"| {_fmt(seed_means)} |") and "| 2 |" in row


def test_control_section_reads_steps_to_target_and_weight_norms(tmp_path: Path):
    exp_dir = tmp_path / "results" / "mlp_control"
    exp_dir.mkdir(parents=True)
    steps = np.arange(1, STEPS + 1)
    taus = {"backprop": 150.0, "forward": 60.0, "backprop_noise": 70.0}
    for method, tau in taus.items():
        loss = 0.3 + 2.0 * np.exp(-steps / tau)
        _write_run(exp_dir, f"{method}_lr{LR:g}_seed0", loss, 0.002 * steps, 0.8, {
            "experiment": "mlp_control", "model": "mlp", "method": method,
            "learning_rate": LR, "seed": 0, "config": {"batch_size": 64}, "env": ENV,
            "ms_per_step": 2.0, "f_ms": 1.0})
        rows = [json.loads(line) for line in (exp_dir / f"{method}_lr{LR:g}_seed0.jsonl")
                .read_text().splitlines()]
        norms = iter([10.0, 12.0 if method == "backprop" else 30.0])
        for r in rows:
            if r["kind"] == "eval":
                r["param_norm"] = next(norms)
        (exp_dir / f"{method}_lr{LR:g}_seed0.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    text = _section(tmp_path / "results", "mlp_control")
    target = (0.3 + 2.0 * np.exp(-steps / 150.0))
    target = np.convolve(target, np.ones(WINDOW) / WINDOW, mode="valid").min()
    for method, tau in taus.items():
        smooth = np.convolve(0.3 + 2.0 * np.exp(-steps / tau), np.ones(WINDOW) / WINDOW,
                             mode="valid")
        first = WINDOW + int(np.flatnonzero(smooth <= target)[0])
        label = {"backprop": "backprop", "forward": "forward gradient",
                 "backprop_noise": "backprop + forward-gradient noise"}[method]
        line = next(x for x in text.splitlines() if x.startswith(f"| {label} |"))
        assert f"| {first:.4g} |" in line, (method, first, line)
        assert line.rstrip(" |").endswith("12" if method == "backprop" else "30"), line
    paths = make_figures(tmp_path / "results", SECTIONS)
    assert [p.name for p in paths] == ["mlp_control.png", "mlp_control.pdf"]
