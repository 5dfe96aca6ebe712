"""Strict JAX for every test: implicit rank promotion and dtype promotion are errors."""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The directory of the four real MNIST IDX files (``FGRAD_MNIST_DIR``, as CI sets it).

    Falls back to ``../shared/data/mnist`` beside the checkout; skips when neither exists, and
    fails when ``FGRAD_MNIST_DIR`` is set but wrong (so CI cannot silently skip).
    """
    env = os.environ.get("FGRAD_MNIST_DIR")
    if env:
        path = Path(env)
        if not path.is_dir():
            pytest.fail(f"FGRAD_MNIST_DIR={env} is not a directory")
        return path
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not default.is_dir():
        pytest.skip("real MNIST not found: set FGRAD_MNIST_DIR to the IDX files' directory")
    return default
