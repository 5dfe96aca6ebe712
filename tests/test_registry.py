"""The experiment registry, the locked configs and the command line built on them."""

import subprocess
import sys
from pathlib import Path

import pytest

from fgrad.lab import config, registry
from fgrad.lab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_every_experiment_file_is_registered_with_a_config_runner_and_report():
    files = sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))
    known = registry.experiments()
    assert sorted(known) == files
    for name, exp in known.items():
        assert exp.doc.strip(), f"{name}: the docstring says how to run it"
        for preset in exp.presets:
            cfg = exp.config(preset)
            assert cfg.name == name and cfg.is_locked and cfg.group in config.GROUPS
            assert callable(registry.runner(cfg.kind))
        if cfg.report:
            (section,) = registry.sections([name], exp.presets[0])
            assert section.name == name and section.title == cfg.title
    for group in ("paper", "beyond"):
        assert registry.in_group(group, "cpu"), f"make reproduce runs the {group} group"


def test_a_typo_in_a_config_key_is_a_one_line_error():
    cfg = registry.get("mlp").config("cpu")
    with pytest.raises(ValueError, match="unknown config key 'diagnostic_every'") as e:
        config.override(cfg, "diagnostic_every", 100)
    assert "\n" not in str(e.value)
    with pytest.raises(AttributeError):
        cfg.diagnostic_every = 100  # the locked ConfigDict itself refuses
    with pytest.raises(ValueError, match="'steps' of 'mlp' takes a int"):
        config.override(cfg, "steps", "many")
    config.override(cfg, "model_kwargs.width", 256)
    assert cfg.model_kwargs.width == 256
    with pytest.raises(ValueError, match="unknown experiment kind 'mnst'"):
        config.defaults("mnst")


def test_unknown_experiment_and_preset_are_one_line_errors(capsys):
    assert main(["run", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown experiment 'nope'") and err.count("\n") == 1
    assert main(["run", "bench", "--config.modles=[1]", "--out", "/tmp/x"]) == 2
    assert "unknown config key 'modles'" in capsys.readouterr().err


def test_overrides_without_out_refuse_to_touch_the_presets_results(capsys):
    assert main(["run", "mlp", "--steps", "50"]) == 2
    err = capsys.readouterr().err
    assert "pass --out DIR" in err and "results/cpu/mlp" in err


def test_python_m_fgrad_lists_the_experiments_and_imports_no_cli_from_the_library():
    out = subprocess.run([sys.executable, "-m", "fgrad"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("mlp", "cnn", "test_functions", "bench"):
        assert f"  {name} " in out.stdout
    code = ("import sys, fgrad; bad = [m for m in sys.modules if m.startswith(('fgrad.lab', "
            "'fgrad.analysis', 'matplotlib', 'tensorflow', 'ml_collections', 'orbax'))]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_option_added_later_at_its_default_is_no_config_change():
    from fgrad._results import config_changes

    old = {"steps": 10, "lr": 0.1}
    new = {"steps": 10, "lr": 0.1, "combine": "mean"}
    assert config_changes(old, new, defaults={"combine": "mean"}) == []
    assert config_changes(old, {**new, "combine": "projection"},
                          defaults={"combine": "mean"}) == ['combine: (none) → "projection"']
    assert config_changes(old, new) == ['combine: (none) → "mean"']  # without defaults: a change
