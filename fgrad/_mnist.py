"""MNIST as numpy arrays: the four IDX files offline, or TensorFlow Datasets online.

``load_mnist`` reads the standard IDX files (plain or gzipped) from a directory given as an
argument or by the environment variable ``FGRAD_MNIST_DIR``; with neither it downloads MNIST
with TFDS. Either way it returns :class:`Mnist`: float32 images in ``[0, 1]`` (``x / 255``,
PyTorch's ``ToTensor``) shaped ``(N, 28, 28, 1)`` and int32 labels shaped ``(N,)``.

:func:`scale_inputs` then gives the images an input convention (:data:`INPUTS`):
``"standardize"``, PyTorch's MNIST convention ``(x/255 − 0.1307) / 0.3081`` (``ToTensor`` then
``Normalize((0.1307,), (0.3081,))``: the training set's pixel mean and standard deviation), or
``"unit"``, the ``[0, 1]`` pixels as loaded.

Every problem with the data raises :class:`MnistError`, whose message is one line naming the
file, what is wrong with it and how to fix it.
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

ENV_VAR = "FGRAD_MNIST_DIR"
LABELS_MAGIC = 0x00000801
IMAGES_MAGIC = 0x00000803
IMAGE_SIZE = 28
NUM_CLASSES = 10
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The number of dimensions each known magic number announces, and what its payload is.
_KINDS = {LABELS_MAGIC: (1, "labels"), IMAGES_MAGIC: (3, "pixels")}
_FIX_FILE = f"re-download it or point {ENV_VAR} at a good copy"
_FIX_DIR = (
    f"set {ENV_VAR} or --mnist-dir to the IDX files' directory, "
    "or unset both to download MNIST with TFDS"
)
# The MNIST training set's pixel mean and standard deviation on the [0, 1] scale, to 4 decimals
# as torchvision's MNIST examples write them (tests/test_mnist.py recomputes them from the
# IDX files: 0.13066 and 0.30811).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# Input conventions of :func:`scale_inputs`: "standardize" (the default of every experiment)
# and "unit" (x / 255, for the record of what scaling does to forward gradients).
INPUTS = ("standardize", "unit")
# Where TFDS downloads MNIST from (tensorflow_datasets/image_classification/mnist.py,
# ``_MNIST_URL``, the builder's ``URL``); the builder's own value is used when it has one.
TFDS_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
# Seconds to wait for a TCP connection to that host (or the proxy) before giving up.
CONNECT_TIMEOUT_S = 3.0
# Larger than any MNIST split, so one batch of this size is the whole split (see _load_tfds).
_TFDS_BATCH = 70_000


class MnistError(ValueError):
    """MNIST is missing or malformed; the message is one line that says how to fix it."""


class Mnist(NamedTuple):
    """MNIST in memory.

    Attributes:
        train_images: float32 ``(60000, 28, 28, 1)`` in ``[0, 1]``.
        train_labels: int32 ``(60000,)`` in ``0..9``.
        test_images: float32 ``(10000, 28, 28, 1)`` in ``[0, 1]``.
        test_labels: int32 ``(10000,)`` in ``0..9``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def check_inputs(inputs: str) -> None:
    """Raises a one-line ValueError unless ``inputs`` is one of :data:`INPUTS`."""
    if inputs not in INPUTS:
        raise ValueError(f"unknown input convention {inputs!r}: use one of {', '.join(INPUTS)} "
                         "(--inputs standardize or --inputs unit)")


def scale_inputs(data: Mnist, inputs: str) -> Mnist:
    """MNIST with its images in the input convention ``inputs``.

    ``"standardize"``: x ↦ (x − μ) / σ with μ = :data:`MNIST_MEAN`, σ = :data:`MNIST_STD`
    (the training set's statistics, applied to both splits), so the training pixels have mean
    ≈ 0 and standard deviation ≈ 1; ``"unit"``: the images as loaded, in ``[0, 1]``.

    Args:
        data: MNIST as :func:`load_mnist` returns it (pixels in ``[0, 1]``).
        inputs: one of :data:`INPUTS`.

    Returns:
        A :class:`Mnist` with float32 images (the same object for ``"unit"``).

    Example:
        >>> train = scale_inputs(load_mnist(), "standardize").train_images  # mean ≈ 0, std ≈ 1
    """
    check_inputs(inputs)
    if inputs == "unit":
        return data
    mean, std = np.float32(MNIST_MEAN), np.float32(MNIST_STD)
    return data._replace(train_images=(data.train_images - mean) / std,
                         test_images=(data.test_images - mean) / std)


def _file_error(path: Path, problem: str) -> MnistError:
    return MnistError(f"MNIST file {path} {problem} ({_FIX_FILE})")


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (by name or by its magic bytes)."""
    if not path.is_file():
        raise MnistError(f"MNIST file {path} does not exist ({_FIX_DIR})")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise _file_error(path, f"cannot be read: {err.strerror or err}") from err
    if path.suffix != ".gz" and not raw.startswith(b"\x1f\x8b"):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _file_error(path, f"is not a valid gzip stream: {reason}") from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parses one IDX file of MNIST labels or images, plain or gzipped.

    Args:
        path: the file; gzip is detected by a ``.gz`` suffix or by the gzip magic bytes.

    Returns:
        uint8 labels ``(N,)`` for magic ``0x00000801`` or uint8 images ``(N, rows, cols)`` for
        magic ``0x00000803``.

    Raises:
        MnistError: the file is missing, not gzip though named so, has an unknown magic number,
            a short header, or a payload whose length is not the product of its dimensions.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise _file_error(path, f"is too short for an IDX header: {len(data)} bytes")
    magic = int.from_bytes(data[:4], "big")
    if magic not in _KINDS:
        raise _file_error(
            path,
            f"has magic number 0x{magic:08x}, not 0x{LABELS_MAGIC:08x} (labels) or "
            f"0x{IMAGES_MAGIC:08x} (images), so it is not an MNIST IDX file",
        )
    ndim, kind = _KINDS[magic]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _file_error(
            path, f"is truncated: expected a {header}-byte header, found {len(data)} bytes"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found < expected:
        raise _file_error(
            path, f"is truncated: expected {expected} bytes of {kind}, found {found}"
        )
    if found > expected:
        raise _file_error(
            path,
            f"is too long: expected {expected} bytes of {kind} for dimensions {dims}, "
            f"found {found}",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(data_dir: Path, name: str) -> Path | None:
    """``data_dir/name`` or ``data_dir/name.gz``, whichever exists (the plain file first)."""
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _to_split(
    images: np.ndarray, labels: np.ndarray, images_src: str, labels_src: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split and converts it to float32 ``(N, 28, 28, 1)`` and int32 ``(N,)``."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise MnistError(
            f"MNIST images {images_src} have shape {images.shape}, expected "
            f"(N, {IMAGE_SIZE}, {IMAGE_SIZE}) ({_FIX_FILE})"
        )
    labels = labels.reshape(-1)
    if images.shape[0] != labels.shape[0]:
        raise MnistError(
            f"MNIST images {images_src} hold {images.shape[0]} images but labels {labels_src} "
            f"hold {labels.shape[0]} labels ({_FIX_FILE})"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise MnistError(
            f"MNIST labels {labels_src} range over {labels.min()}..{labels.max()}, expected "
            f"0..{NUM_CLASSES - 1} ({_FIX_FILE})"
        )
    pixels = images[..., None].astype(np.float32)
    pixels /= np.float32(255.0)
    return pixels, labels.astype(np.int32)


def _load_dir(data_dir: Path) -> Mnist:
    """Reads the four IDX files from ``data_dir`` (see :func:`load_mnist`)."""
    if not data_dir.is_dir():
        problem = "is not a directory" if data_dir.exists() else "does not exist"
        raise MnistError(f"MNIST directory {data_dir} {problem} ({_FIX_DIR})")
    found = {field: _find(data_dir, name) for field, name in FILES.items()}
    missing = [str(data_dir.absolute() / FILES[f]) for f, path in found.items() if path is None]
    if missing:
        files = "file " if len(missing) == 1 else "files "
        verb = "does" if len(missing) == 1 else "do"
        raise MnistError(
            f"MNIST {files}{', '.join(missing)} (plain or .gz) {verb} not exist ({_FIX_DIR})"
        )
    paths = {field: path for field, path in found.items() if path is not None}
    arrays = {field: read_idx(path) for field, path in paths.items()}
    splits = []
    for split in ("train", "test"):
        img, lab = f"{split}_images", f"{split}_labels"
        splits += _to_split(arrays[img], arrays[lab], str(paths[img]), str(paths[lab]))
    return Mnist(*splits)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if len(text) > 300:  # the error TFDS raised, cut; the hint after it never is
        text = text[:300] + "…"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _connect_error(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``url``'s host (or to the proxy the environment names
    for it) opens within ``timeout`` seconds; else why not, e.g. ``storage.googleapis.com:443:
    Name or service not known``. Name lookup is bounded by the same timeout."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 80
    result: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(getattr(err, "strerror", None) or str(err) or type(err).__name__)

    thread = threading.Thread(target=connect, daemon=True)  # getaddrinfo ignores the timeout
    thread.start()
    thread.join(timeout + 0.5)
    reason = result[0] if result else f"timed out after {timeout:g} s"
    return None if reason is None else f"{host}:{port}: {reason}"


def _check_download_host(tfds, data_dir: str | os.PathLike | None) -> None:
    """Raises MnistError within seconds when MNIST is not prepared in TFDS's data directory
    and its download host cannot be reached (TFDS itself would retry for minutes)."""
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # not "Variant folder ... has no dataset_info.json"
    try:
        builder = tfds.builder("mnist", data_dir=None if data_dir is None else
                               os.fspath(data_dir))
        if builder.is_prepared():
            return
        url, where = getattr(builder, "URL", None) or TFDS_MNIST_URL, builder.data_dir
    except Exception:  # noqa: BLE001 - TFDS's own load below reports its problems
        url, where = TFDS_MNIST_URL, "TFDS's data directory"
    finally:
        absl_log.setLevel(level)
    reason = _connect_error(url)
    if reason is not None:
        raise MnistError(
            f"cannot download MNIST with TFDS: it is not in {where} and its download host "
            f"cannot be reached ({reason}); to work offline, set {ENV_VAR} (or pass "
            f"--mnist-dir) to a directory holding the four MNIST IDX files "
            f"({', '.join(FILES.values())}, plain or .gz), e.g. "
            f"export {ENV_VAR}=/path/to/mnist"
        )


def _concat_batches(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Joins ``(images, labels)`` batches into one pair; an empty split gives empty arrays."""
    if not batches:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8), np.zeros((0,), np.int64)
    images, labels = zip(*batches, strict=True)
    return np.concatenate(images), np.concatenate(labels)


def _load_tfds(data_dir: str | os.PathLike | None = None) -> Mnist:
    """Downloads (once) and loads MNIST with TensorFlow Datasets.

    TensorFlow is imported here only, and is told to leave any GPU to JAX. The splits are read
    as one batch each of an explicit size rather than with ``batch_size=-1``: under
    ``tfds.testing.mock_data`` the split sizes are unknown and ``batch_size=-1`` then asks
    TensorFlow for a batch of ``sys.maxsize`` examples, which aborts the process.

    Args:
        data_dir: TFDS's data directory; ``None`` for its default (``~/tensorflow_datasets``).

    Returns:
        The same :class:`Mnist` as the offline loader.

    Raises:
        MnistError: TFDS is not installed, MNIST is not prepared and its download host cannot
            be reached (checked first, in seconds: :func:`_check_download_host`), or
            downloading or preparing MNIST failed.
    """
    try:
        import tensorflow_datasets as tfds  # imports TensorFlow only when it needs it
    except ImportError as err:
        raise MnistError(
            f"cannot download MNIST: {_one_line(err)} (install tensorflow-datasets, or set "
            f"{ENV_VAR} to a directory of the four IDX files)"
        ) from err
    _check_download_host(tfds, data_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # not TensorFlow's CPU-feature notes
    try:
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):  # TensorFlow had already initialized its devices.
            pass
    except ImportError as err:
        raise MnistError(
            f"cannot download MNIST: {_one_line(err)} (install tensorflow-datasets, or set "
            f"{ENV_VAR} to a directory of the four IDX files)"
        ) from err
    try:
        train, test = tfds.load(
            "mnist",
            split=["train", "test"],
            batch_size=_TFDS_BATCH,
            as_supervised=True,
            data_dir=None if data_dir is None else os.fspath(data_dir),
        )
        batches = [list(tfds.as_numpy(ds)) for ds in (train, test)]
    except MnistError:
        raise
    except Exception as err:  # Any download or prepare failure becomes one line.
        raise MnistError(
            f"cannot download or prepare MNIST with TFDS: {_one_line(err)} (set {ENV_VAR} or "
            f"--mnist-dir to a directory of the four IDX files to work offline)"
        ) from err
    splits = []
    for name, split in zip(("train", "test"), batches, strict=True):
        images, labels = _concat_batches(split)
        splits += _to_split(images, labels, f"TFDS mnist/{name}", f"TFDS mnist/{name}")
    return Mnist(*splits)


def load_mnist(data_dir: str | os.PathLike | None = None) -> Mnist:
    """Loads MNIST from IDX files, or with TFDS when no directory is given.

    Args:
        data_dir: a directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or with a
            ``.gz`` suffix. ``None`` uses ``$FGRAD_MNIST_DIR``; when that is unset or empty,
            MNIST is downloaded with TensorFlow Datasets.

    Returns:
        :class:`Mnist` with float32 images in ``[0, 1]`` and int32 labels.

    Raises:
        MnistError: a one-line description of what is missing or malformed and how to fix it.
    """
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or None
    if data_dir is None:
        return _load_tfds()
    return _load_dir(Path(data_dir))
