"""Data sets for the experiments, read from their standard files.

================  ===========================================  ======================
name              files                                        input (C, H, W)
================  ===========================================  ======================
fashion-mnist     four MNIST IDX files, gzipped or not          (1, 28, 28)
mnist             the same IDX files                            (1, 28, 28)
cifar10           CIFAR-10 "python version" batches or .tar.gz  (3, 32, 32)
imagefolder       ``train/`` and ``val/`` with a folder per     (3, S, S), S =
                  class of JPEG/PNG images                      ``image_size``
digits            scikit-learn's bundled 8×8 digits             (1, 8, 8)
================  ===========================================  ======================

:func:`load_dataset` returns :class:`DataSplits`. All but ``imagefolder`` are held
in memory as :class:`TensorSplit` on the requested device; ``imagefolder`` is
decoded lazily. :func:`batch_iterator` draws random minibatches from either kind.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from slstm.data.batching import batch_iterator, evaluation_batches
from slstm.data.cifar import CIFAR10_CLASSES
from slstm.data.digits import DIGITS_CLASSES
from slstm.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES
from slstm.data.splits import DataError, DataSplits, RawData, TensorSplit

__all__ = [
    "DATASETS",
    "DataError",
    "DataSplits",
    "DatasetSpec",
    "TensorSplit",
    "add_data_arguments",
    "batch_iterator",
    "evaluation_batches",
    "load_dataset",
    "load_dataset_from_args",
    "parse_classes",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class DatasetSpec:
    """Facts about a data set that need no file: its name, files and shape.

    Attributes:
        name: the registry name passed to ``--data``.
        description: one line for ``slstm info``.
        files: the files expected in ``data_dir``.
        default_dir: where the files are when ``data_dir`` is None, or None when
            the user must name a directory (or no files are needed).
        input_shape: ``(C, H, W)``; None when it depends on ``image_size``.
        class_names: the classes of the full data set, in label order; None
            when they are read from disk (the folder names of an image folder).
        fix: how to obtain the files, appended to every DataError.
    """

    name: str
    description: str
    files: str
    default_dir: str | None
    input_shape: tuple[int, int, int] | None
    class_names: tuple[str, ...] | None
    fix: str

    @property
    def num_classes(self) -> int | None:
        """Number of classes in the full data set, or None when read from disk."""
        return None if self.class_names is None else len(self.class_names)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="fashion-mnist",
            description="Zalando's 28x28 grey images of clothing, 60000 train, "
            "10000 test",
            files="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
            default_dir=FASHION_MNIST_DIR,
            input_shape=(1, 28, 28),
            class_names=tuple(FASHION_MNIST_CLASSES),
            fix="install the files with `apt-get install dataset-fashion-mnist` "
            f"(they go to {FASHION_MNIST_DIR}) or pass --data-dir DIR with the "
            "four IDX files",
        ),
        DatasetSpec(
            name="mnist",
            description="LeCun's 28x28 handwritten digits, 60000 train, 10000 test",
            files="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
            default_dir=None,
            input_shape=(1, 28, 28),
            class_names=tuple(MNIST_CLASSES),
            fix="put the four MNIST IDX files (gzipped or not) in one directory "
            "and pass it with --data-dir DIR",
        ),
        DatasetSpec(
            name="cifar10",
            description="Krizhevsky's 32x32 colour images, 50000 train, 10000 test",
            files="data_batch_1 .. data_batch_5 and test_batch (the 'python "
            "version'), extracted or as cifar-10-python.tar.gz",
            default_dir=None,
            input_shape=(3, 32, 32),
            class_names=tuple(CIFAR10_CLASSES),
            fix="download cifar-10-python.tar.gz (the 'CIFAR-10 python version') "
            "and pass it, or the directory it extracts to, with --data-dir",
        ),
        DatasetSpec(
            name="imagefolder",
            description="ImageNet-style folders of JPEG/PNG images, decoded lazily",
            files="train/<class>/*.jpg|png and val/<class>/*.jpg|png",
            default_dir=None,
            input_shape=None,
            class_names=None,
            fix="pass --data-dir DIR where DIR/train and DIR/val contain one "
            "folder of JPEG or PNG images per class",
        ),
        DatasetSpec(
            name="digits",
            description="scikit-learn's bundled 8x8 digits, 1500 train, 297 test; "
            "for quick trials",
            files="none (shipped with scikit-learn)",
            default_dir=None,
            input_shape=(1, 8, 8),
            class_names=tuple(DIGITS_CLASSES),
            fix="reinstall scikit-learn",
        ),
    ]
}


def _dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}"
        ) from None


def _data_dir(spec: DatasetSpec, data_dir) -> Path:
    if data_dir is None:
        if spec.default_dir is None:
            raise DataError(
                f"data set {spec.name!r} has no default location, so data_dir "
                f"is required; expected files: {spec.files}; {spec.fix}"
            )
        data_dir = spec.default_dir
    return Path(os.path.expanduser(os.fspath(data_dir)))


def _read_raw(spec: DatasetSpec, data_dir) -> RawData:
    if spec.name in ("fashion-mnist", "mnist"):
        from slstm.data.idx import read_idx_dataset

        path = _data_dir(spec, data_dir)
        return read_idx_dataset(path, list(spec.class_names), fix=spec.fix)
    if spec.name == "cifar10":
        from slstm.data.cifar import read_cifar10

        return read_cifar10(_data_dir(spec, data_dir), fix=spec.fix)
    if spec.name == "digits":
        from slstm.data.digits import read_digits

        return read_digits()
    raise AssertionError(f"no in-memory reader for {spec.name!r}")


# The raw arrays of the last data sets read, so that repeated runs in one process
# (an experiment training one network per optimizer) decode the files once.
_RAW_CACHE: OrderedDict[tuple, RawData] = OrderedDict()
_RAW_CACHE_SIZE = 2


def _file_state(path: Path) -> tuple:
    """Return (name, size, mtime) of ``path`` or of the files up to two levels in."""
    if path.is_file():
        stat = path.stat()
        return ((str(path), stat.st_size, stat.st_mtime_ns),)
    state = []
    for folder in [path, *(p for p in sorted(path.iterdir()) if p.is_dir())]:
        for entry in sorted(folder.iterdir()):
            if entry.is_file():
                stat = entry.stat()
                state.append((str(entry), stat.st_size, stat.st_mtime_ns))
    return tuple(state)


def _read_raw_cached(spec: DatasetSpec, data_dir) -> RawData:
    key: tuple = (spec.name,)
    if spec.name != "digits":
        path = _data_dir(spec, data_dir)
        if not path.exists():
            return _read_raw(spec, data_dir)  # raises the reader's DataError
        key += (str(path.resolve()), _file_state(path))
    if key in _RAW_CACHE:
        _RAW_CACHE.move_to_end(key)
        return _RAW_CACHE[key]
    raw = _read_raw(spec, data_dir)
    for array in (raw.train_images, raw.train_labels, raw.test_images, raw.test_labels):
        array.flags.writeable = False  # shared by later calls, so never modified
    _RAW_CACHE[key] = raw
    while len(_RAW_CACHE) > _RAW_CACHE_SIZE:
        _RAW_CACHE.popitem(last=False)
    return raw


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    classes=None,
    validation: int | float = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    image_size: int = 64,
    num_workers: int | None = None,
) -> DataSplits:
    """Read a data set and return its train, validation and test splits.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: the directory (or, for ``cifar10``, the ``.tar.gz``); None uses
            the data set's default location (Fashion-MNIST only).
        classes: None for all classes, an int ``k`` for the first ``k``, or a
            sequence of class ids or class names. The chosen classes are
            relabelled ``0..k-1`` in the order given.
        validation: a count, or a fraction in ``[0, 1)``, of the (class-subset)
            training examples held out as the validation split. Which ones is
            decided by ``seed`` alone.
        seed: seeds the validation split (and, for ``imagefolder``, the sample
            used to estimate the normalisation statistics).
        device: where the in-memory tensors live (``"cpu"``, ``"cuda"``, or
            ``"auto"``); for ``imagefolder``, where batches are sent.
        image_size: ``imagefolder`` only: the side in pixels of the square crop.
        num_workers: ``imagefolder`` only: worker processes that decode images;
            default: up to 4, one per CPU core.

    Returns:
        :class:`DataSplits`. In-memory splits are :class:`TensorSplit` whose
        inputs are float32 ``(N, C, H, W)``, normalised per channel with the mean
        and std of the train split after the validation split is removed. The
        arrays read from the files of the last two in-memory data sets are kept
        for the next call, until a file's size or modification time changes.

    Raises:
        DataError: a file is missing, corrupt or inconsistent. The in-memory
            sets check every file before returning anything. An image folder
            checks its layout at once and each image when it is decoded.
        ValueError: an argument is invalid (unknown name, bad class subset,
            validation too large).
    """
    from slstm.data.splits import finish_in_memory
    from slstm.utils import resolve_device

    spec = _dataset_spec(name)
    device = resolve_device(device)
    if spec.name == "imagefolder":
        from slstm.data.imagefolder import load_image_folder

        return load_image_folder(
            _data_dir(spec, data_dir),
            classes=classes,
            validation=validation,
            seed=seed,
            device=device,
            image_size=image_size,
            num_workers=num_workers,
            fix=spec.fix,
        )
    raw = _read_raw_cached(spec, data_dir)
    return finish_in_memory(
        spec.name, raw, classes=classes, validation=validation, seed=seed, device=device
    )


def parse_classes(text: str):
    """Parse ``--classes``: a count (``"5"``), ids (``"0,2,4"``), ranges (``"0-4"``)
    or class names (``"Sneaker,Bag"``), mixed freely after the count form.

    Returns an int, or a list of ints and names, as :func:`load_dataset` takes
    them. A name is any entry that is not an int or a range of ints, so names
    with dashes such as ``T-shirt/top`` work.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    chosen: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        range_match = re.fullmatch(r"(\d+)-(\d+)", part)
        if not part:
            raise argparse.ArgumentTypeError(
                f"invalid class list {text!r}: an entry is empty; write a count "
                "(5), ids (0,2,4), a range (0-4) or class names (Sneaker,Bag)"
            )
        if part.isdigit():
            chosen.append(int(part))
        elif range_match:
            first, last = int(range_match[1]), int(range_match[2])
            if last < first:
                raise argparse.ArgumentTypeError(
                    f"invalid class range {part!r}: the end is below the start"
                )
            chosen.extend(range(first, last + 1))
        else:
            chosen.append(part)
    return chosen


def _parse_validation(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid validation size {text!r}; write a count (5000) or a "
            "fraction (0.1)"
        ) from None


def add_data_arguments(parser: argparse.ArgumentParser, *, default="fashion-mnist"):
    """Add the options that choose and shape a data set to ``parser``.

    Adds ``--data``, ``--data-dir``, ``--classes``, ``--validation``,
    ``--image-size`` and ``--data-workers``; :func:`load_dataset_from_args` reads
    them back.
    """
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        default=default,
        choices=list(DATASETS),
        metavar="NAME",
        help=f"data set: {', '.join(DATASETS)} (default: {default})",
    )
    group.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="directory of the data set's files (cifar10 also takes the .tar.gz); "
        f"default for fashion-mnist: {FASHION_MNIST_DIR}",
    )
    group.add_argument(
        "--classes",
        type=parse_classes,
        default=None,
        metavar="LIST",
        help="use only these classes, relabelled 0..k-1 in the order given: a "
        "count (5 = the first five), ids (0,2,4), a range (0-4) or class names "
        "(Sneaker,Bag); default: all",
    )
    group.add_argument(
        "--validation",
        type=_parse_validation,
        default=0,
        metavar="N",
        help="training examples held out for validation: a count or a fraction "
        "(default: 0)",
    )
    group.add_argument(
        "--image-size",
        type=int,
        default=64,
        metavar="PIXELS",
        help="imagefolder only: side of the square center crop (default: 64)",
    )
    group.add_argument(
        "--data-workers",
        type=int,
        default=None,
        metavar="N",
        help="imagefolder only: worker processes decoding images (default: up to 4)",
    )
    return group


def load_dataset_from_args(args: argparse.Namespace, *, seed: int = 0, device="cpu"):
    """Call :func:`load_dataset` with the options of :func:`add_data_arguments`."""
    return load_dataset(
        args.data,
        args.data_dir,
        classes=args.classes,
        validation=args.validation,
        seed=seed,
        device=device,
        image_size=args.image_size,
        num_workers=args.data_workers,
    )
