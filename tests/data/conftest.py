"""Fixtures that write small data sets in each supported format."""

import numpy as np
import pytest

from slstm.data.idx import write_idx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def make_idx_arrays(rng, train=40, test=20, size=(6, 5), num_classes=10):
    """Return random uint8 images and labels covering every class in both splits."""
    arrays = {}
    for split, count in (("train", train), ("t10k", test)):
        arrays[f"{split}-images"] = rng.integers(0, 256, (count, *size), dtype=np.uint8)
        arrays[f"{split}-labels"] = (np.arange(count) % num_classes).astype(np.uint8)
    return arrays


def write_idx_dir(directory, arrays, *, gz=True):
    """Write the four IDX files of ``arrays`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    paths = {}
    for key, array in arrays.items():
        split, kind = key.split("-")
        rank = 3 if kind == "images" else 1
        path = directory / f"{split}-{kind}-idx{rank}-ubyte{suffix}"
        write_idx(path, array)
        paths[key] = path
    return paths


@pytest.fixture
def write_idx_set():
    """The function that writes an IDX data set: ``write_idx_set(dir, arrays)``."""
    return write_idx_dir


@pytest.fixture
def idx_arrays():
    return make_idx_arrays(np.random.default_rng(0))


@pytest.fixture
def idx_dir(tmp_path, idx_arrays):
    """A directory with a small MNIST-format data set, gzipped."""
    write_idx_dir(tmp_path / "idx", idx_arrays)
    return tmp_path / "idx"
