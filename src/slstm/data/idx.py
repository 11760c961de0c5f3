"""Readers for MNIST-format IDX files (MNIST, Fashion-MNIST), gzipped or not.

An IDX file starts with a 4-byte magic number: two zero bytes, a type code
(``0x08`` = unsigned byte) and the number of dimensions. The sizes follow as
big-endian uint32, then the data in C order. Image files have magic
``0x00000803`` (N, rows, columns) and label files ``0x00000801`` (N,).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from slstm.data.splits import DataError, RawData

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# The four files of a data set, by (split, kind). Each is looked up under several
# names: the canonical one, the variant with a dot before "idx", each with and
# without ".gz".
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]


def candidate_names(stem: str) -> list[str]:
    """Return the file names under which the IDX file ``stem`` is accepted."""
    dotted = stem.replace("-idx", ".idx")
    return [stem + ".gz", stem, dotted + ".gz", dotted]


def find_idx_file(directory: Path, stem: str, fix: str) -> Path:
    """Return the path of ``stem`` in ``directory`` or raise DataError."""
    for name in candidate_names(stem):
        path = directory / name
        if path.is_file():
            return path
    raise DataError(
        f"{directory}: missing file {stem}.gz (or {stem} uncompressed); {fix}"
    )


def _read_bytes(path: Path, fix: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(
            f"{path}: cannot read the file ({exc.strerror}); {fix}"
        ) from exc
    # Detect gzip by its magic bytes, not the file name: some mirrors ship
    # uncompressed files that keep the ".gz" suffix and the other way round.
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(
                f"{path}: the gzip data is truncated or corrupt ({exc}); {fix}"
            ) from exc
    return data


def read_idx(path: str | os.PathLike, magic: int, *, fix: str = "") -> np.ndarray:
    """Read one IDX file with the expected ``magic`` number as a uint8 array.

    Args:
        path: the file, gzipped or not.
        magic: ``IMAGES_MAGIC`` (returns ``(N, rows, columns)``) or
            ``LABELS_MAGIC`` (returns ``(N,)``).
        fix: what to do about a bad file, appended to every error message.

    Raises:
        DataError: the file is missing or unreadable, has another magic number,
            or is shorter or longer than its header
            declares.
    """
    path = Path(path)
    data = _read_bytes(path, fix)
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(
            f"{path}: truncated file of {len(data)} bytes, shorter than the "
            f"4-byte magic number; {fix}"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"(unsigned bytes, {ndim} dimensions); this is not an IDX "
            f"{'image' if ndim == 3 else 'label'} file; {fix}"
        )
    if len(data) < header_size:
        raise DataError(
            f"{path}: truncated header of {len(data)} bytes, expected "
            f"{header_size}; {fix}"
        )
    shape = tuple(np.frombuffer(data, dtype=">u4", count=ndim, offset=4).tolist())
    # math.prod on Python ints cannot overflow, unlike np.prod on int64.
    expected = header_size + math.prod(shape)
    if len(data) < expected:
        raise DataError(
            f"{path}: truncated data: the header gives shape {shape}, which needs "
            f"{expected} bytes, but the file has {len(data)}; {fix}"
        )
    if len(data) > expected:
        raise DataError(
            f"{path}: {len(data) - expected} bytes after the data of shape "
            f"{shape}; the file is corrupt or its header is wrong; {fix}"
        )
    # Copy so the array owns writable memory instead of viewing the bytes object.
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _read_split(directory: Path, split: str, num_classes: int, fix: str):
    images_path = find_idx_file(directory, IDX_FILES[(split, "images")], fix)
    labels_path = find_idx_file(directory, IDX_FILES[(split, "labels")], fix)
    images = read_idx(images_path, IMAGES_MAGIC, fix=fix)
    labels = read_idx(labels_path, LABELS_MAGIC, fix=fix)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{directory}: {images_path.name} has {images.shape[0]} images but "
            f"{labels_path.name} has {labels.shape[0]} labels; the counts must "
            f"match; {fix}"
        )
    if labels.size and labels.max() >= num_classes:
        bad = int(np.flatnonzero(labels >= num_classes)[0])
        raise DataError(
            f"{labels_path}: label {labels[bad]} at index {bad} is out of range "
            f"0..{num_classes - 1}; {fix}"
        )
    return images[:, None], labels.astype(np.int64)


def read_idx_dataset(
    directory: str | os.PathLike, class_names: list[str], *, fix: str
) -> RawData:
    """Read the four IDX files of an MNIST-format data set from ``directory``.

    Every file is read and checked before anything is returned, so a bad file
    raises DataError and no partial data set escapes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"{directory}: directory not found; it should contain "
            f"{IDX_FILES[('train', 'images')]}.gz and the three other IDX files; "
            f"{fix}"
        )
    train_images, train_labels = _read_split(directory, "train", len(class_names), fix)
    test_images, test_labels = _read_split(directory, "test", len(class_names), fix)
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{directory}: train images are {train_images.shape[2:]} but test "
            f"images are {test_images.shape[2:]}; both splits must have one "
            f"image size; {fix}"
        )
    return RawData(train_images, train_labels, test_images, test_labels, class_names)


def write_idx(
    path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None
):
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``).

    The inverse of :func:`read_idx`, for preparing small data sets and tests.
    """
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
