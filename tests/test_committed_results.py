"""The committed results folders are the current configs' results: rerunning their preset
(``make reproduce PRESET=<preset>``, ``make beyond``) skips every run instead of refusing them as
another config's or training again."""

from pathlib import Path

import pytest

from fgrad.lab import registry
from fgrad.lab.run import RunOptions, depth_sweep, estimator_quality, mnist, test_functions

RESULTS = Path(__file__).resolve().parents[1] / "results"
CHECKED_KINDS = ("mnist", "test_functions", "depth_sweep", "estimator_quality")


def _committed(preset: str) -> list[str]:
    return [e.name for e in registry.experiments().values()
            if preset in e.presets and (RESULTS / preset / e.name).is_dir()
            and e.config(preset).kind in CHECKED_KINDS]


def _would_rerun(*args, **kwargs):
    raise AssertionError("a committed run is not complete for its config: it would run again")


@pytest.mark.parametrize("preset", ["cpu", "full"])
def test_rerunning_a_committed_preset_skips_every_run(preset, monkeypatch, capsys):
    names = _committed(preset)
    assert names, f"results/{preset} holds no results of a checked kind"
    for module, attr in ((mnist, "load_mnist"), (test_functions, "run_trajectories"),
                         (depth_sweep, "run_depth_sweep"), (estimator_quality, "load_mnist")):
        monkeypatch.setattr(module, attr, _would_rerun)
    for name in names:  # ResultsError (another config's results) or AssertionError fails it
        cfg = registry.get(name).config(preset)
        registry.runner(cfg.kind)(cfg, RESULTS / preset / name, RunOptions())
    assert "[stale]" not in capsys.readouterr().out
