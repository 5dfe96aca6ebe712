"""The input convention and the initialisation: one of each for every MNIST experiment, recorded
in every run and part of a run's identity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fgrad._mnist import INPUTS, MNIST_MEAN, MNIST_STD, Mnist, load_mnist, scale_inputs
from fgrad._results import ResultsError, check_config
from fgrad.lab.config import override, to_dict
from fgrad.lab.registry import experiments
from fgrad.lab.run.mnist import MNIST_DEFAULTS


def test_the_standardisation_constants_are_the_training_sets_mean_and_std(mnist_dir):
    train = load_mnist(mnist_dir).train_images.astype(np.float64)
    mean, std = train.mean(), train.std()
    assert abs(mean - MNIST_MEAN) < 5e-5, mean  # 0.130660…, written 0.1307
    assert abs(std - MNIST_STD) < 5e-5, std  # 0.308107…, written 0.3081
    scaled = scale_inputs(load_mnist(mnist_dir), "standardize")
    assert scaled.train_images.dtype == np.float32
    assert abs(float(scaled.train_images.mean())) < 1e-3
    assert abs(float(scaled.train_images.std()) - 1.0) < 1e-3


def test_scale_inputs_standardizes_both_splits_and_leaves_unit_alone():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28, 1)).astype(np.float32) / np.float32(255)
    labels = np.arange(5, dtype=np.int32)
    data = Mnist(images, labels, images[:2], labels[:2])
    assert scale_inputs(data, "unit") is data
    out = scale_inputs(data, "standardize")
    np.testing.assert_allclose(out.train_images, (images - 0.1307) / 0.3081, rtol=1e-6)
    np.testing.assert_allclose(out.test_images, (images[:2] - 0.1307) / 0.3081, rtol=1e-6)
    assert out.train_labels is labels
    with pytest.raises(ValueError, match=r"^unknown input convention 'x255': use one of "
                       r"standardize, unit \(--inputs standardize or --inputs unit\)$"):
        scale_inputs(data, "x255")


def _mnist_configs():
    for e in experiments().values():
        for preset in e.presets:
            cfg = e.config(preset)
            if cfg.kind in ("mnist", "estimator_quality"):
                yield e.name, preset, cfg


def test_every_mnist_experiment_standardizes_and_uses_pytorch_init():
    seen = set()
    for name, preset, cfg in _mnist_configs():
        if name == "input_scaling":  # the record of the other convention, by design
            assert cfg.inputs == "unit" and cfg.init == "pytorch"
            continue
        assert (cfg.inputs, cfg.init) == ("standardize", "pytorch"), (name, preset)
        for v in cfg.get("variants") or []:
            assert v.get("inputs", cfg.inputs) == "standardize", (name, v["name"])
            assert v.get("init", cfg.init) == "pytorch", (name, v["name"])
        seen.add(name)
    assert {"logreg", "mlp", "cnn", "k_sweep", "lr_sweep", "low_rank", "activity",
            "activity_cnn", "mlp_control", "estimator_quality"} <= seen


def test_bad_inputs_or_init_and_a_second_init_are_one_line_errors():
    from fgrad.lab.registry import get

    cfg = get("logreg").config("cpu")
    assert set(INPUTS) == {"standardize", "unit"}
    from fgrad.lab.config import check

    for key, value, message in (
            ("inputs", "raw", r"^inputs must be one of standardize, unit, got 'raw' \(logreg\): "
                              r"pass --inputs standardize or --inputs unit$"),
            ("init", "xavier", r"^init must be one of .*pytorch.*, got 'xavier' \(logreg\): "
                               r"pass --init pytorch or --init flax$")):
        bad = cfg.copy_and_resolve_references()
        bad.unlock()
        override(bad, key, value)
        with pytest.raises(ValueError, match=message):
            check(bad)
    bad = cfg.copy_and_resolve_references()
    bad.model_kwargs["init_scheme"] = "flax"
    with pytest.raises(ValueError, match=r"^model_kwargs.init_scheme is set \(logreg\): the "
                       r"initialisation is the config key init"):
        check(bad)


def test_a_run_of_the_other_convention_or_of_before_the_key_is_another_config(tmp_path):
    from fgrad.lab.registry import get

    new = to_dict(get("logreg").config("cpu"))
    path = tmp_path / "forward_lr0.0002_seed0.json"
    unit = {**new, "inputs": "unit"}
    path.write_text(json.dumps({"config": unit}))
    with pytest.raises(ResultsError, match=r"another config \(inputs: \"unit\" → "
                       r"\"standardize\"\)"):
        check_config(path, {"config": unit}, new, MNIST_DEFAULTS)
    # a summary from before the keys existed was made with x/255 (and the model's own init)
    legacy = {k: v for k, v in new.items() if k not in ("inputs", "init")}
    with pytest.raises(ResultsError, match=r"init: \(none\) → \"pytorch\"; inputs: \(none\) → "
                       r"\"standardize\""):
        check_config(path, {"config": legacy}, new, MNIST_DEFAULTS)
    check_config(path, {"config": legacy}, {**new, "inputs": "unit", "init": "flax"},
                 MNIST_DEFAULTS)  # the same run as an explicit unit/flax config: no change


def test_the_readme_library_example_runs():
    """The README's library example, as printed, on one zero batch."""
    import re
    from pathlib import Path

    import jax.numpy as jnp

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## The library\n\n```python\n(.*?)```", text, re.S)
    assert block, "README.md has no python block under '## The library'"
    scope = {"images": jnp.zeros((64, 28, 28, 1)), "labels": jnp.zeros((64,), jnp.int32)}
    exec(compile(block.group(1), "README.md", "exec"), scope)  # noqa: S102
    assert jnp.all(jnp.isfinite(scope["params"]["Dense_0"]["kernel"]))
