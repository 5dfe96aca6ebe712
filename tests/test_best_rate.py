"""The sweep's one selection rule (fgrad._results.best_learning_rate), the runner's extra seeds
at each variant's best rate (best_rate_seeds), the report's agreement with it, and the median
step time of a run (fgrad.analysis.metrics.step_ms)."""

import json
from pathlib import Path

import numpy as np

from fgrad._results import best_learning_rate, write_json
from fgrad.analysis.metrics import best_rates, step_ms
from fgrad.analysis.runs import MnistRun, load_mnist_runs
from fgrad.lab.config import defaults, finalize
from fgrad.lab.run.mnist import best_rate_runs


def _summary(variant, lr, seed, loss, status="complete"):
    return {"experiment": "x", "method": "backprop", "variant": variant, "learning_rate": lr,
            "seed": seed, "status": status, "steps": 10, "steps_done": 10,
            "final_train_loss": loss, "ms_per_step": 1.0, "steps_per_call": 1,
            "config": {"seeds": [0], "batch_size": 8}}


def test_best_learning_rate_uses_the_sweep_seeds_and_skips_failed_rates():
    runs = [_summary("a", 1e-3, 0, 0.5), _summary("a", 1e-2, 0, 0.4),
            _summary("a", 1e-1, 0, 0.1, status="diverged"),
            _summary("a", 1e-3, 1, 0.0)]  # an extra seed does not take part
    assert best_learning_rate(runs, [0]) == 1e-2
    assert best_learning_rate(runs, [0, 1]) == 1e-3  # the only rate with both seeds
    assert best_learning_rate([], [0]) is None
    assert best_learning_rate([_summary("a", 1e-3, 0, float("nan"))], [0]) is None


def _config(**kw):
    cfg = defaults("mnist")
    cfg.update(name="sweep", learning_rates=[1e-3, 1e-2], seeds=[0], best_rate_seeds=[1],
               variants=[{"name": "a", "method": "backprop"},
                         {"name": "b", "method": "forward"}], **kw)
    return finalize(cfg)


def _write_run(d: Path, s: dict) -> None:
    name = f"{s['variant']}_lr{s['learning_rate']:g}_seed{s['seed']}"
    write_json(d / f"{name}.json", {**s, "final_eval": {"test_acc": 0.5}})
    rows = [{"kind": "eval", "step": 0, "time": 0.0, "test_loss": 2.0, "test_acc": 0.1}]
    rows += [{"kind": "train", "step": i, "loss": 1.0, "time": 0.001 * i} for i in range(1, 11)]
    rows += [{"kind": "eval", "step": 10, "time": 0.01, "test_loss": 1.0, "test_acc": 0.5}]
    (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_best_rate_runs_follow_the_sweep_and_the_report_agrees(tmp_path):
    cfg = _config()
    assert best_rate_runs(cfg, tmp_path) == []  # no sweep yet: nothing to add
    for variant, losses in (("a", (0.5, 0.4)), ("b", (0.3, 0.9))):
        for lr, loss in zip((1e-3, 1e-2), losses):
            _write_run(tmp_path, _summary(variant, lr, 0, loss))
    extra = best_rate_runs(cfg, tmp_path)
    assert [(r[0]["variant"], r[1], r[2], r[3]) for r in extra] == [
        ("a", 1e-2, 1, "a_lr0.01_seed1"), ("b", 1e-3, 1, "b_lr0.001_seed1")]
    # the extra seed at the best rate does not change the choice, in the runner or the report
    _write_run(tmp_path, _summary("a", 1e-2, 1, 5.0))
    assert [r[1] for r in best_rate_runs(cfg, tmp_path)] == [1e-2, 1e-3]
    runs, excluded = load_mnist_runs(tmp_path)
    assert best_rates(runs, excluded) == {"a": 1e-2, "b": 1e-3}


def test_step_ms_is_the_median_over_calls():
    # 3 steps per call; calls take 30, 30, 300 (a slow one) and 30 ms
    per_call = np.array([0.03, 0.03, 0.3, 0.03])
    ends = np.cumsum(per_call)
    time = np.concatenate([[e - c + c * (j + 1) / 3 for j in range(3)]
                           for e, c in zip(ends, per_call)])
    run = MnistRun(Path("x"), {"steps_per_call": 3, "ms_per_step": 32.5}, np.arange(1, 13),
                   np.ones(12), time, np.zeros(2), np.zeros(2))
    assert abs(step_ms(run) - 10.0) < 1e-9  # median 30 ms per call / 3 steps
    one_call = MnistRun(Path("x"), {"steps_per_call": 12, "ms_per_step": 7.0},
                        np.arange(1, 13), np.ones(12), time, np.zeros(2), np.zeros(2))
    assert step_ms(one_call) == 7.0  # fewer than two calls: the summary's mean


def test_activity_section_flags_best_rates_at_the_sweep_edge(tmp_path):
    from fgrad.analysis.activity import section

    # a: best at 1e-2, the largest rate (an edge); b: best at 1e-2 of three rates (inside)
    for variant, losses in (("a", (0.5, 0.4)), ("b", (0.3, 0.1, 0.9))):
        for lr, loss in zip((1e-3, 1e-2, 1e-1), losses):
            _write_run(tmp_path, {**_summary(variant, lr, 0, loss), "variant": variant})
    text = "\n".join(section(tmp_path))
    edge = next(line for line in text.splitlines() if line.startswith("**Sweep edges.**"))
    assert "a (η₀ = 0.01, sweep 0.001–0.01)" in edge and "b (" not in edge


def test_local_loss_variants_are_the_five_methods_of_both_comparisons():
    from fgrad.lab.config import local_loss_variants
    from fgrad.lab.registry import get

    v = local_loss_variants({"width": 16}, head_hidden=16)
    assert [(x["name"], x["method"]) for x in v] == [
        ("backprop", "backprop"), ("backprop_local", "backprop"), ("forward", "forward"),
        ("activity", "activity"), ("activity_local", "activity")]
    assert v[1]["model_kwargs"] == {"width": 16, "local_losses": True,
                                    "head_hidden": 16}
    for name, model in (("activity", "mlp"), ("activity_cnn", "cnn")):
        cfg = get(name).config("cpu")
        assert cfg.model == model and [x["name"] for x in cfg.variants] == [x["name"] for x in v]
        assert cfg.variants[4]["model_kwargs"]["local_losses"] is True


def test_widening_a_sweep_keeps_its_runs_but_other_changes_do_not():
    from fgrad._results import config_changes

    old = {"learning_rates": [1e-3], "steps": 10, "seeds": [0]}
    assert config_changes(old, {**old, "learning_rates": [1e-4, 1e-3]}) == []
    assert config_changes(old, {**old, "steps": 20}) == ["steps: 10 → 20"]
    assert config_changes(old, {**old, "seeds": [0, 1]})  # the sweep's seeds choose the best
