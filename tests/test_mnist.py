"""MNIST loading: the real IDX files, malformed copies of them, and the TFDS path (mocked)."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fgrad._mnist
from fgrad._mnist import (
    ENV_VAR,
    FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    Mnist,
    MnistError,
    load_mnist,
    read_idx,
)


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """The bytes of an IDX file with the given header and payload."""
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
    return path


def _fake_dir(
    root: Path,
    n_train: int = 4,
    n_test: int = 3,
    suffix: str = ".gz",
    n_train_labels: int | None = None,
    label_value: int | None = None,
    side: int = 28,
) -> Path:
    """Writes four small fake IDX files; the keyword arguments inject one defect each."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    counts = {"train": (n_train, n_train if n_train_labels is None else n_train_labels)}
    counts["test"] = (n_test, n_test)
    for split, (n_images, n_labels) in counts.items():
        pixels = rng.integers(0, 256, (n_images, side, 28), dtype=np.uint8)
        labels = np.arange(n_labels, dtype=np.uint8) % 10
        if label_value is not None:
            labels[-1] = label_value
        _write(
            root / f"{FILES[f'{split}_images']}{suffix}",
            _idx(IMAGES_MAGIC, pixels.shape, pixels.tobytes()),
        )
        _write(
            root / f"{FILES[f'{split}_labels']}{suffix}",
            _idx(LABELS_MAGIC, (n_labels,), labels.tobytes()),
        )
    return root


def _assert_one_line(err: pytest.ExceptionInfo[MnistError], *names: str) -> str:
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "\n" not in message, message
    for name in names:
        assert name in message, message
    return message


def _assert_mnist(data: Mnist, n_train: int, n_test: int) -> None:
    assert isinstance(data, Mnist)
    expected = [(n_train, 28, 28, 1), (n_train,), (n_test, 28, 28, 1), (n_test,)]
    assert [a.shape for a in data] == expected
    assert [a.dtype for a in data] == [np.float32, np.int32, np.float32, np.int32]
    for images in (data.train_images, data.test_images):
        assert images.min() >= 0.0 and images.max() <= 1.0
    for labels in (data.train_labels, data.test_labels):
        assert labels.min() >= 0 and labels.max() <= 9


# --- the real files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> Mnist:
    return load_mnist(mnist_dir)


def test_real_mnist_shapes_dtypes_ranges(mnist: Mnist) -> None:
    _assert_mnist(mnist, 60_000, 10_000)
    # x / 255 exactly: the pixel values are multiples of 1/255 and both ends are present.
    assert mnist.train_images.max() == 1.0 and mnist.train_images.min() == 0.0
    np.testing.assert_array_equal(np.unique(mnist.train_labels), np.arange(10))


def test_real_mnist_first_labels(mnist: Mnist) -> None:
    np.testing.assert_array_equal(mnist.train_labels[:5], [5, 0, 4, 1, 9])
    np.testing.assert_array_equal(mnist.test_labels[:5], [7, 2, 1, 0, 4])


def test_real_mnist_pixels_are_raw_over_255(mnist: Mnist, mnist_dir: Path) -> None:
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert raw.dtype == np.uint8 and raw.shape == (10_000, 28, 28)
    np.testing.assert_allclose(mnist.test_images[:50, ..., 0], raw[:50] / 255.0, rtol=1e-6)


def test_read_idx_labels(mnist_dir: Path) -> None:
    labels = read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")
    assert labels.dtype == np.uint8 and labels.shape == (60_000,)


# --- small fake files -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_fake_dir_plain_and_gz(tmp_path: Path, suffix: str) -> None:
    _assert_mnist(load_mnist(_fake_dir(tmp_path / "d", suffix=suffix)), 4, 3)


def test_env_var_names_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(_fake_dir(tmp_path / "d", n_train=5)))
    _assert_mnist(load_mnist(), 5, 3)


@pytest.mark.parametrize("value", [None, ""])
def test_no_directory_uses_tfds(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    import fgrad._mnist as mnist_module

    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)  # what `make` exports when no data directory exists
    monkeypatch.setattr(mnist_module, "_load_tfds", lambda data_dir=None: "tfds")
    assert load_mnist() == "tfds"


# --- malformed files: one-line MnistError naming the file ---------------------------------------


@pytest.fixture(scope="module")
def real_labels(mnist_dir: Path) -> bytes:
    """The uncompressed bytes of the real training labels (60,008 bytes)."""
    return gzip.decompress((mnist_dir / "train-labels-idx1-ubyte.gz").read_bytes())


def test_truncated_payload(tmp_path: Path, real_labels: bytes) -> None:
    path = _write(tmp_path / "train-labels-idx1-ubyte.gz", real_labels[: 8 + 1000])
    with pytest.raises(MnistError) as err:
        read_idx(path)
    message = _assert_one_line(err, str(path), "truncated", ENV_VAR)
    assert "expected 60000 bytes of labels, found 1000" in message


def test_truncated_gzip_stream(tmp_path: Path, mnist_dir: Path) -> None:
    whole = (mnist_dir / "train-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MnistError) as err:
        read_idx(path)
    _assert_one_line(err, str(path), "gzip")


def test_truncated_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "t10k-images-idx3-ubyte", struct.pack(">II", IMAGES_MAGIC, 5))
    with pytest.raises(MnistError) as err:
        read_idx(path)
    _assert_one_line(err, str(path), "truncated", "header")


def test_too_long(tmp_path: Path, real_labels: bytes) -> None:
    path = _write(tmp_path / "train-labels-idx1-ubyte", real_labels + b"\x00" * 7)
    with pytest.raises(MnistError) as err:
        read_idx(path)
    _assert_one_line(err, str(path), "too long", "found 60007")


@pytest.mark.parametrize("magic", [0x00000802, 0x00000903, 0x08030000, 0])
def test_bad_magic(tmp_path: Path, magic: int) -> None:
    path = _write(tmp_path / "train-labels-idx1-ubyte", _idx(magic, (2,), b"\x00\x01"))
    with pytest.raises(MnistError) as err:
        read_idx(path)
    _assert_one_line(err, str(path), "magic number", f"0x{magic:08x}")


@pytest.mark.parametrize("content", [b"not gzip at all", b"\x1f\x8b\x08\x00garbage" * 4])
def test_bad_gzip(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(MnistError) as err:
        read_idx(path)
    _assert_one_line(err, str(path), "gzip")


def test_corrupt_gzip_checksum(tmp_path: Path, real_labels: bytes) -> None:
    data = bytearray(gzip.compress(real_labels[:108], compresslevel=0))
    data[-8] ^= 0xFF  # the CRC-32 of the trailer
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(MnistError) as err:
        read_idx(path)
    _assert_one_line(err, str(path), "gzip")


def test_missing_file(tmp_path: Path) -> None:
    root = _fake_dir(tmp_path / "d")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistError) as err:
        load_mnist(root)
    _assert_one_line(err, str(root / "t10k-labels-idx1-ubyte"), "does not exist", ENV_VAR)
    with pytest.raises(MnistError) as err:
        read_idx(root / "t10k-labels-idx1-ubyte.gz")
    _assert_one_line(err, str(root / "t10k-labels-idx1-ubyte.gz"), "does not exist")


def test_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(MnistError) as err:
        load_mnist()
    _assert_one_line(err, str(missing), "does not exist", ENV_VAR, "--mnist-dir", "TFDS")


def test_label_image_count_mismatch(tmp_path: Path) -> None:
    root = _fake_dir(tmp_path / "d", n_train=4, n_train_labels=5)
    with pytest.raises(MnistError) as err:
        load_mnist(root)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "4 images", "5 labels")
    _assert_one_line(err, *names)


def test_header_count_disagrees_with_payload(tmp_path: Path) -> None:
    path = _write(tmp_path / "t10k-labels-idx1-ubyte.gz", _idx(LABELS_MAGIC, (10,), b"\x01" * 9))
    with pytest.raises(MnistError) as err:
        read_idx(path)
    _assert_one_line(err, str(path), "expected 10 bytes of labels, found 9")


def test_label_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(MnistError) as err:
        load_mnist(_fake_dir(tmp_path / "d", label_value=10))
    _assert_one_line(err, "train-labels-idx1-ubyte", "0..9")


def test_images_not_28x28(tmp_path: Path) -> None:
    with pytest.raises(MnistError) as err:
        load_mnist(_fake_dir(tmp_path / "d", side=27))
    _assert_one_line(err, "train-images-idx3-ubyte", "(4, 27, 28)", "(N, 28, 28)")


# --- TFDS -----------------------------------------------------------------------------------------


def test_importing_fgrad_does_not_import_tensorflow() -> None:
    code = "import sys, fgrad._mnist, fgrad._models; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tfds_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(fgrad._mnist, "_check_download_host", lambda tfds, data_dir: None)
    with tfds.testing.mock_data(num_examples=6):
        data = load_mnist()
    _assert_mnist(data, 6, 6)


def test_tfds_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    from fgrad._mnist import _load_tfds

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("network is unreachable\nsecond line")

    monkeypatch.setattr(tfds, "load", offline)
    monkeypatch.setattr(fgrad._mnist, "_check_download_host", lambda tfds, data_dir: None)
    with pytest.raises(MnistError) as err:
        _load_tfds()
    _assert_one_line(err, "TFDS", "network is unreachable second line", ENV_VAR)
