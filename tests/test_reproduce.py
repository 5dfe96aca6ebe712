"""``python -m fgrad reproduce``: one-line errors, and resuming an interrupted reproduce."""

import json
from pathlib import Path

import pytest
from test_analysis import results  # noqa: F401  (the synthetic results folder fixture)

import fgrad.lab.reproduce
import fgrad.lab.run.test_functions
from fgrad._results import ResultsError
from fgrad.lab.cli import main

TINY = '''
from fgrad.lab.config import defaults, finalize


def get_config(preset="cpu"):
    cfg = defaults("test_functions")
    cfg.update(name="test_functions", title="Test functions", order=1, chunk=50, seeds=1,
               functions={{"beale": {{"start": (0.0, 0.5), "learning_rate": 0.01,
                                     "steps": {beale}}},
                          "rosenbrock": {{"start": (-1.0, 0.0), "learning_rate": 5e-4,
                                          "steps": 100}}}})
    return finalize(cfg)
'''


# main() sets the XLA flags first; in a test process JAX already runs, which it rightly warns of.
@pytest.mark.filterwarnings("ignore:configure_xla_flags\\(\\) ran after JAX:UserWarning")
def test_cli_errors_are_one_line(results: Path, capsys):  # noqa: F811
    assert main(["reproduce", "--only", "nope", "--out", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown experiment nope") and "logreg" in err
    assert "\n" not in err
    (results / "mlp" / "forward_lr0.0002_seed0.jsonl").unlink()
    assert main(["reproduce", "--figures-only", "--out", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: results file") and "forward_lr0.0002_seed0.jsonl" in err


def test_reproduce_resumes_after_an_interruption(tmp_path: Path, monkeypatch):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "test_functions.py").write_text(TINY.format(beale=100))
    real, calls = fgrad.lab.run.test_functions.run_trajectories, []

    def counting(fn_name, method, *args):
        calls.append(f"{fn_name}_{method}")
        if interrupt_after and len(calls) > interrupt_after:
            raise KeyboardInterrupt
        return real(fn_name, method, *args)

    monkeypatch.setattr(fgrad.lab.run.test_functions, "run_trajectories", counting)
    drawn = []  # figures are tested above; here only that reproduce asks for them
    monkeypatch.setattr(fgrad.lab.reproduce, "make_figures",
                        lambda out, sections: drawn.append(out) or [])
    out = tmp_path / "out"
    run = lambda: fgrad.lab.reproduce.reproduce("cpu", out, ["test_functions"],
                                                directory=experiments)
    interrupt_after = 1
    with pytest.raises(KeyboardInterrupt):
        run()
    first = out / "test_functions" / "beale_forward.json"
    assert calls == ["beale_forward", "beale_backprop"] and first.exists()
    stamp = first.stat().st_mtime_ns
    interrupt_after, calls[:] = 0, []
    inv = run()
    assert calls == ["beale_backprop", "rosenbrock_forward", "rosenbrock_backprop"]
    assert first.stat().st_mtime_ns == stamp
    record = json.loads((out / "reproduce.json").read_text())
    assert record["wall_time_s"] == inv["wall_time_s"] > 0
    assert drawn == [out]
    report = (out / "REPORT.md").read_text()
    assert "| beale | forward gradient |" in report and "wall time" in report
    calls[:] = []
    # results of a changed config are never overwritten silently: one line naming the fix ...
    (experiments / "test_functions.py").write_text(TINY.format(beale=50))
    with pytest.raises(ResultsError) as err:
        run()
    msg = str(err.value)
    assert "functions.beale.steps: 100 → 50" in msg and "--force" in msg and "--out" in msg
    assert "\n" not in msg and calls == [] and first.stat().st_mtime_ns == stamp
    # ... and force (FORCE=1) reruns them
    fgrad.lab.reproduce.reproduce("cpu", out, ["test_functions"], force=True,
                                  directory=experiments)
    assert calls == ["beale_forward", "beale_backprop", "rosenbrock_forward",
                     "rosenbrock_backprop"]


def test_a_test_function_run_that_reaches_nan_is_diverged_not_complete(tmp_path: Path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "experiments" / "test_functions.py"), "--steps", "250",
           "--seeds", "2", "--config.functions.rosenbrock.learning_rate=1.0",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "rosenbrock_forward.json").read_text())
    assert summary["status"] == "diverged" and 0 < summary["diverged_step"] < 250
    assert "rosenbrock_forward: f(x) became non-finite at iteration" in proc.stderr
    assert json.loads((tmp_path / "beale_forward.json").read_text())["status"] == "complete"


def test_reproduce_records_the_cpu_time_the_hypervisor_stole(tmp_path: Path, monkeypatch):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "test_functions.py").write_text(TINY.format(beale=100))
    readings = iter([100.0, 101.0, 131.0, 140.0])  # start; before, after the experiment; end
    monkeypatch.setattr(fgrad.lab.reproduce, "cpu_steal_s", lambda: next(readings))
    monkeypatch.setattr(fgrad.lab.reproduce, "make_figures", lambda out, sections: [])
    out = tmp_path / "out"
    inv = fgrad.lab.reproduce.reproduce("cpu", out, ["test_functions"], directory=experiments)
    assert inv["experiment_cpu_steal_s"] == {"test_functions": 30.0}
    assert inv["cpu_steal_s"] == 40.0 and inv["cpu_cores"] >= 1
    header = (out / "REPORT.md").read_text().split("Definitions.")[0]
    assert "the hypervisor took 30 CPU-s of the" in header and "`/proc/stat` steal" in header


def test_cpu_steal_is_read_from_proc_stat_where_linux_reports_it():
    from fgrad._env import cpu_steal_s

    stolen = cpu_steal_s()
    if Path("/proc/stat").exists():
        assert isinstance(stolen, float) and stolen >= 0.0
    else:
        assert stolen is None
