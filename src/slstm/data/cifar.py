"""Reader for the CIFAR-10 "python version": pickled batches, extracted or archived.

The official archive ``cifar-10-python.tar.gz`` extracts to ``cifar-10-batches-py/``
with ``data_batch_1`` .. ``data_batch_5`` (10000 training images each),
``test_batch`` and ``batches.meta``. Each batch is a pickled dict whose ``data``
is a uint8 array ``(N, 3072)`` (the 1024 red, then green, then blue pixels of a
32×32 image, row by row) and whose ``labels`` is a list of N ints in 0..9.

The batches are unpickled with :class:`RestrictedUnpickler`, which rebuilds
numpy arrays and plain containers and rejects every other global, so a
malicious file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from slstm.data.splits import DataError, RawData

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
EXTRACTED_DIR = "cifar-10-batches-py"
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
IMAGE_SHAPE = (3, 32, 32)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle names a global that :class:`RestrictedUnpickler` does not allow."""


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    rebuild = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # Pickles written under numpy 1 name "numpy.core", under numpy 2 "numpy._core".
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for name, function in rebuild.items():
            allowed[(module, name)] = function
    # Protocol 2 has no opcode for bytes, so Python 3 pickles them as a call to
    # _codecs.encode(text, "latin1").
    allowed[("_codecs", "encode")] = _latin1_encode
    # Protocol 2 pickles an empty bytes object as a call to bytes(), and
    # protocol 5 (Python 3.14's default) an array as numpy's _frombuffer.
    for module in ("__builtin__", "builtins"):
        allowed[(module, "bytes")] = bytes
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = np._core.numeric._frombuffer
    return allowed


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise ForbiddenGlobalError(
            f"_codecs.encode with encoding {encoding!r} is not allowed in a "
            "CIFAR-10 batch"
        )
    return text.encode("latin1", errors)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, dtypes, scalars and bytes.

    Dicts, lists, strings and numbers need no globals. Bytes may need
    ``_codecs.encode``, which is allowed for latin-1 only. Any other global (a
    class or function named in the pickle) raises :class:`ForbiddenGlobalError`.
    """

    _allowed = _numpy_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(
                f"global {module}.{name} is not allowed in a CIFAR-10 batch"
            ) from None

    def persistent_load(self, pid):
        raise ForbiddenGlobalError("persistent ids are not allowed in a CIFAR-10 batch")


def unpickle_batch(data: bytes, source: str, fix: str) -> dict:
    """Unpickle one batch safely and return it with ``str`` keys.

    The official files were pickled by Python 2, so strings are decoded as bytes.
    """
    try:
        batch = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ForbiddenGlobalError as exc:
        raise DataError(f"{source}: not a CIFAR-10 batch ({exc}); {fix}") from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        MemoryError,  # a corrupt length field requests a huge allocation
    ) as exc:
        raise DataError(
            f"{source}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); "
            f"{fix}"
        ) from exc
    if not isinstance(batch, dict):
        raise DataError(
            f"{source}: expected a pickled dict, found {type(batch).__name__}; {fix}"
        )
    return {
        k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()
    }


def _check_batch(batch: dict, source: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images (N, 3, 32, 32) uint8, labels (N,) int64)`` of a valid batch."""
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DataError(
            f"{source}: the batch has no {' or '.join(map(repr, missing))} entry "
            f"(keys: {sorted(map(str, batch))}); {fix}"
        )
    images = _check_images(batch["data"], source, fix)
    labels = _check_labels(batch["labels"], source, fix)
    if len(labels) != len(images):
        raise DataError(
            f"{source}: {len(images)} images but {len(labels)} labels; the counts "
            f"must match; {fix}"
        )
    return images, labels


def _check_images(data, source: str, fix: str) -> np.ndarray:
    row = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        if isinstance(data, np.ndarray):
            found = f"a {data.dtype} array of shape {data.shape}"
        else:
            found = type(data).__name__
        raise DataError(
            f"{source}: 'data' must be a uint8 array (N, {row}), found {found}; {fix}"
        )
    if data.shape[1] != row:
        raise DataError(
            f"{source}: 'data' rows have {data.shape[1]} values, expected {row} "
            f"(3x32x32); {fix}"
        )
    return data.reshape(-1, *IMAGE_SHAPE)


def _check_labels(labels, source: str, fix: str) -> np.ndarray:
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{source}: 'labels' is not a list of ints ({exc}); {fix}"
        ) from exc
    is_integer = np.issubdtype(labels.dtype, np.integer)
    if labels.ndim != 1 or (labels.size and not is_integer):
        raise DataError(f"{source}: 'labels' must be a list of ints; {fix}")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:
        raise DataError(
            f"{source}: label {labels[bad[0]]} at index {bad[0]} is out of range "
            f"0..{len(CIFAR10_CLASSES) - 1}; {fix}"
        )
    return labels.astype(np.int64)


def _class_names(meta: bytes | None, source: str, fix: str) -> list[str]:
    if meta is None:
        return list(CIFAR10_CLASSES)
    names = unpickle_batch(meta, source, fix).get("label_names")
    if not isinstance(names, list) or len(names) != len(CIFAR10_CLASSES):
        raise DataError(
            f"{source}: 'label_names' must list {len(CIFAR10_CLASSES)} names; {fix}"
        )
    return [_label_name(n) for n in names]


def _label_name(name) -> str:
    """Decode a class name: UTF-8 where it is valid, else latin-1, which decodes
    any bytes."""
    if not isinstance(name, bytes):
        return str(name)
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return name.decode("latin1")


class _Directory:
    """Batch files in an extracted ``cifar-10-batches-py`` directory."""

    def __init__(self, path: Path):
        self.path = path

    def read(self, name: str, fix: str, *, required: bool = True) -> bytes | None:
        path = self.path / name
        if not path.is_file():
            if not required:
                return None
            raise DataError(
                f"{self.path}: missing file {name} (CIFAR-10 python version); {fix}"
            )
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(
                f"{path}: cannot read the file ({exc.strerror}); {fix}"
            ) from exc

    def source(self, name: str) -> str:
        return str(self.path / name)


class _Archive:
    """Batch files inside ``cifar-10-python.tar.gz``, read without extracting."""

    def __init__(self, path: Path, fix: str):
        self.path = path
        try:
            with tarfile.open(path, "r:*") as archive:
                members = [m for m in archive.getmembers() if m.isfile()]
                wanted = {*TRAIN_BATCHES, TEST_BATCH, META_FILE}
                self.files = {}
                for member in members:
                    name = os.path.basename(member.name)
                    if name in wanted and name not in self.files:
                        handle = archive.extractfile(member)
                        self.files[name] = handle.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DataError(
                f"{path}: the archive is truncated or corrupt ({exc}); {fix}"
            ) from exc

    def read(self, name: str, fix: str, *, required: bool = True) -> bytes | None:
        if name in self.files:
            return self.files[name]
        if not required:
            return None
        raise DataError(
            f"{self.path}: the archive has no member {EXTRACTED_DIR}/{name}; {fix}"
        )

    def source(self, name: str) -> str:
        return f"{self.path}:{EXTRACTED_DIR}/{name}"


def _open_source(path: Path, fix: str):
    if path.is_file():
        return _Archive(path, fix)
    if not path.is_dir():
        raise DataError(
            f"{path}: not found; expected the directory {EXTRACTED_DIR} (with "
            f"data_batch_1 .. data_batch_5 and test_batch) or {ARCHIVE_NAME}; {fix}"
        )
    for candidate in (path, path / EXTRACTED_DIR):
        if (candidate / TEST_BATCH).is_file() or (
            candidate / TRAIN_BATCHES[0]
        ).is_file():
            return _Directory(candidate)
    if (path / ARCHIVE_NAME).is_file():
        return _Archive(path / ARCHIVE_NAME, fix)
    raise DataError(
        f"{path}: missing file {TRAIN_BATCHES[0]}; expected data_batch_1 .. "
        f"data_batch_5 and test_batch here or in {EXTRACTED_DIR}/, or {ARCHIVE_NAME}; "
        f"{fix}"
    )


def read_cifar10(path: str | os.PathLike, *, fix: str) -> RawData:
    """Read CIFAR-10 from an extracted directory, its parent, or the ``.tar.gz``.

    Every batch is unpickled and checked before anything is returned.

    Raises:
        DataError: a batch is missing, not a CIFAR-10 batch, truncated, contains
            labels out of 0..9, or has different image and label counts.
    """
    source = _open_source(Path(path), fix)

    def load(name):
        batch = unpickle_batch(source.read(name, fix), source.source(name), fix)
        return _check_batch(batch, source.source(name), fix)

    train = [load(name) for name in TRAIN_BATCHES]
    test_images, test_labels = load(TEST_BATCH)
    meta = source.read(META_FILE, fix, required=False)
    class_names = _class_names(meta, source.source(META_FILE), fix)
    return RawData(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=class_names,
    )
