"""Tests of fgrad.train.checkpoint: round trips, retention, fingerprints, interrupted saves."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fgrad.train.checkpoint import CheckpointMismatch, RunCheckpointer, config_fingerprint

REPO = Path(__file__).resolve().parents[1]


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


def make_state(seed: int = 0) -> TrainState:
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {"Dense_0": {"kernel": jax.random.normal(k1, (5, 4)), "bias": jnp.zeros(4)},
              "Dense_1": {"kernel": jax.random.normal(k2, (4, 3), jnp.bfloat16),
                          "bias": jnp.full((3,), jnp.nan)}}
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.sgd(optax.exponential_decay(0.1, 1, 0.9), momentum=0.9))
    opt_state = tx.init(params)
    # Make the momentum trace and the schedule count non-trivial.
    opt_state = jax.tree.map(lambda x: x + jnp.ones_like(x), opt_state)
    source_state = (k3, jax.random.key(7, impl="rbg"), jnp.float32(0.25))
    return TrainState(params, (source_state, opt_state), jnp.int32(1234))


def assert_bit_identical(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def step_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir())


@pytest.mark.parametrize("abstract", [True, False])
def test_round_trip_bit_identical(tmp_path: Path, abstract: bool) -> None:
    state = make_state()
    ckpt = RunCheckpointer(tmp_path / "run", "fp")
    meta = {"log_lines": 17, "train_time_s": 12.5, "note": "ok", "nested": {"a": [1, 2]}}
    ckpt.save(40, state, meta)
    target = jax.eval_shape(lambda: make_state(1)) if abstract else make_state(1)
    step, restored, restored_meta = RunCheckpointer(tmp_path / "run", "fp").restore(target)
    assert step == 40
    assert restored_meta == meta
    assert isinstance(restored, TrainState)
    assert isinstance(restored.opt_state[1][1][0], optax.TraceState)
    assert restored.step.dtype == jnp.int32 and int(restored.step) == 1234
    assert_bit_identical(state, restored)


def test_numpy_and_python_leaves(tmp_path: Path) -> None:
    state = {"np": np.arange(6, dtype=np.int16).reshape(2, 3), "scalar": np.float32(1.5),
             "int": 3, "float": 0.1, "flag": True}
    ckpt = RunCheckpointer(tmp_path, "fp")
    ckpt.save(0, state, {})
    _, restored, _ = ckpt.restore({"np": np.zeros((2, 3), np.int16), "scalar": np.float32(0),
                                   "int": 0, "float": 0.0, "flag": False})
    assert isinstance(restored["np"], np.ndarray) and restored["np"].dtype == np.int16
    np.testing.assert_array_equal(restored["np"], state["np"])
    assert isinstance(restored["scalar"], np.float32) and restored["scalar"] == np.float32(1.5)
    assert restored["int"] == 3 and restored["float"] == 0.1 and restored["flag"] is True


def test_latest_step_and_keep(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    ckpt = RunCheckpointer(directory, "fp")
    assert ckpt.latest_step() is None
    assert not directory.exists()  # asking does not create the directory
    state = make_state()
    for step in (10, 20, 30):
        ckpt.save(step, state, {"step": step})
        assert ckpt.latest_step() == step
    assert step_dirs(directory) == ["30"]
    assert RunCheckpointer(directory, "fp").latest_step() == 30

    two = RunCheckpointer(tmp_path / "two", "fp", keep=2)
    for step in (1, 2, 3):
        two.save(step, state, {})
    assert step_dirs(tmp_path / "two") == ["2", "3"]
    with pytest.raises(ValueError, match="later step"):
        two.save(1, state, {})


def test_resave_same_step_replaces(tmp_path: Path) -> None:
    ckpt = RunCheckpointer(tmp_path, "fp")
    ckpt.save(5, {"x": jnp.zeros(3)}, {"v": 1})
    ckpt.save(5, {"x": jnp.ones(3)}, {"v": 2})
    step, state, meta = ckpt.restore({"x": jnp.zeros(3)})
    assert step == 5 and meta == {"v": 2}
    np.testing.assert_array_equal(state["x"], np.ones(3, np.float32))


def test_fingerprint_mismatch(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    RunCheckpointer(directory, config_fingerprint({"lr": 1e-3})).save(3, make_state(), {})
    other = RunCheckpointer(directory, config_fingerprint({"lr": 2e-3}))
    with pytest.raises(CheckpointMismatch) as info:
        other.restore(make_state())
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert str(directory) in message and "another config" in message and "--force" in message


def test_structure_mismatch(tmp_path: Path) -> None:
    ckpt = RunCheckpointer(tmp_path, "fp")
    ckpt.save(1, {"w": jnp.zeros((2, 3))}, {})
    for target in ({"w": jnp.zeros((3, 2))}, {"w": jnp.zeros((2, 3), jnp.int32)},
                   {"v": jnp.zeros((2, 3))}, {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}):
        with pytest.raises(CheckpointMismatch, match="does not match") as info:
            ckpt.restore(target)
        assert "\n" not in str(info.value)


def test_restore_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RunCheckpointer(tmp_path / "none", "fp").restore({"x": jnp.zeros(1)})


def test_remove(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    ckpt = RunCheckpointer(directory, "fp")
    ckpt.save(1, make_state(), {})
    assert directory.is_dir()
    ckpt.remove()
    assert not directory.exists()
    assert ckpt.latest_step() is None
    ckpt.remove()  # idempotent
    ckpt.save(2, make_state(), {})  # usable again
    assert ckpt.latest_step() == 2


def test_half_written_checkpoint_is_ignored(tmp_path: Path) -> None:
    # orbax's atomic-rename protocol writes <step>.orbax-checkpoint-tmp and renames it at the
    # end: a leftover of a later step (the save was killed) must not count.
    directory = tmp_path / "run"
    state = make_state()
    RunCheckpointer(directory, "fp").save(10, state, {"n": 1})
    partial = directory / "20.orbax-checkpoint-tmp"
    (partial / "state.orbax-checkpoint-tmp").mkdir(parents=True)
    (partial / "state.orbax-checkpoint-tmp" / "junk").write_bytes(b"\0" * 10)
    ckpt = RunCheckpointer(directory, "fp")
    assert ckpt.latest_step() == 10
    step, restored, meta = ckpt.restore(jax.eval_shape(lambda: state))
    assert step == 10 and meta == {"n": 1}
    assert_bit_identical(state, restored)
    ckpt.save(20, state, {"n": 2})  # the stale tmp directory does not get in the way
    assert step_dirs(directory) == ["20"]


_KILLED_SAVE = textwrap.dedent("""
    import os, sys
    import jax, jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from fgrad.train.checkpoint import RunCheckpointer

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def die_before_commit(self):
        if self._final_path.name == "2":  # everything written, the step dir not yet renamed
            os._exit(17)
        return await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = die_before_commit
    ckpt = RunCheckpointer(sys.argv[1], "fp")
    ckpt.save(1, {"x": jnp.arange(4.0), "key": jax.random.key(5)}, {"n": 1})
    ckpt.save(2, {"x": jnp.arange(4.0) + 1, "key": jax.random.key(6)}, {"n": 2})
""")


def test_killed_save_leaves_previous_checkpoint(tmp_path: Path) -> None:
    from orbax.checkpoint._src.path import atomicity

    if not hasattr(atomicity, "AtomicRenameTemporaryPath"):
        pytest.skip("orbax internals changed: cannot interrupt a save at its commit")
    directory = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(directory)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert any(".orbax-checkpoint-tmp" in name for name in step_dirs(directory))
    ckpt = RunCheckpointer(directory, "fp")
    assert ckpt.latest_step() == 1
    step, state, meta = ckpt.restore({"x": jnp.zeros(4), "key": jax.random.key(0)})
    assert step == 1 and meta == {"n": 1}
    np.testing.assert_array_equal(state["x"], np.arange(4, dtype=np.float32))
    assert_bit_identical(state["key"], jax.random.key(5))


def test_orbax_info_logging_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="absl")
    ckpt = RunCheckpointer(tmp_path, "fp")
    ckpt.save(1, make_state(), {})
    ckpt.restore(make_state())
    noisy = [r for r in caplog.records
             if r.levelno < logging.WARNING and f"{os.sep}orbax{os.sep}" in r.pathname]
    assert noisy == []
    logging.getLogger("absl").info("others still log")
    assert any(r.getMessage() == "others still log" for r in caplog.records)


def test_config_fingerprint() -> None:
    a = config_fingerprint({"lr": 2e-4, "model": {"name": "mlp", "width": 1024}, "seeds": (0, 1)})
    b = config_fingerprint({"seeds": [0, 1], "model": {"width": 1024, "name": "mlp"}, "lr": 2e-4})
    assert a == b and len(a) == 64 and int(a, 16) >= 0
    assert a != config_fingerprint({"lr": 2e-4, "model": {"name": "mlp", "width": 512},
                                    "seeds": (0, 1)})
    assert config_fingerprint({"path": Path("/x"), "dtype": jnp.float32}) == \
        config_fingerprint({"dtype": str(jnp.float32), "path": "/x"})
