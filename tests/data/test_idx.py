"""MNIST-format IDX files: reading good files and rejecting each kind of bad one."""

import gzip

import numpy as np
import pytest
import torch

from slstm.data import DataError, load_dataset
from slstm.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx


@pytest.mark.parametrize("name", ["images.idx.gz", "images.idx"])
def test_read_idx_round_trip(tmp_path, name):
    images = np.random.default_rng(1).integers(0, 256, (7, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    loaded = read_idx(tmp_path / name, IMAGES_MAGIC)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, images)


def test_read_idx_detects_gzip_by_content(tmp_path):
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / "labels", labels, compress=True)
    assert (tmp_path / "labels").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(tmp_path / "labels", LABELS_MAGIC), labels)


def test_mnist_values_match_files(idx_dir, idx_arrays):
    data = load_dataset("mnist", idx_dir)
    train = idx_arrays["train-images"].astype(np.float64) / 255
    mean, std = train.mean(), train.std()
    assert data.input_shape == (1, 6, 5)
    assert data.num_classes == 10
    assert data.class_names == [str(d) for d in range(10)]
    assert data.mean == pytest.approx((mean,))
    assert data.std == pytest.approx((std,))
    assert data.train.inputs.dtype == torch.float32
    assert data.train.targets.dtype == torch.int64
    np.testing.assert_allclose(
        data.train.inputs[:, 0].numpy(), (train - mean) / std, atol=1e-5
    )
    np.testing.assert_array_equal(
        data.train.targets.numpy(), idx_arrays["train-labels"]
    )
    test = idx_arrays["t10k-images"].astype(np.float64) / 255
    np.testing.assert_allclose(
        data.test.inputs[:, 0].numpy(), (test - mean) / std, atol=1e-5
    )
    np.testing.assert_array_equal(data.test.targets.numpy(), idx_arrays["t10k-labels"])


def test_uncompressed_dotted_names(tmp_path, idx_arrays):
    directory = tmp_path / "plain"
    directory.mkdir()
    for key, array in idx_arrays.items():
        split, kind = key.split("-")
        rank = 3 if kind == "images" else 1
        write_idx(directory / f"{split}-{kind}.idx{rank}-ubyte", array)
    data = load_dataset("mnist", directory)
    assert len(data.train) == 40
    assert len(data.test) == 20


def test_fashion_mnist_from_custom_dir(idx_dir):
    data = load_dataset("fashion-mnist", idx_dir)
    assert data.name == "fashion-mnist"
    assert data.class_names[0] == "T-shirt/top"
    assert data.class_names[9] == "Ankle boot"
    assert len(data.train) == 40


def _assert_error(directory, *fragments):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", directory)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_directory_names_fix(tmp_path):
    _assert_error(
        tmp_path / "nowhere",
        str(tmp_path / "nowhere"),
        "not found",
        "train-images-idx3-ubyte.gz",
        "apt-get install dataset-fashion-mnist",
    )


def test_missing_file_names_file_and_fix(idx_dir):
    (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    _assert_error(
        idx_dir,
        str(idx_dir),
        "missing file t10k-labels-idx1-ubyte.gz",
        "apt-get install dataset-fashion-mnist",
    )


def test_mnist_without_directory():
    with pytest.raises(DataError, match="data_dir is required.*--data-dir"):
        load_dataset("mnist")


def test_wrong_magic_number(idx_dir, idx_arrays):
    # A label file where the image file should be.
    path = idx_dir / "train-images-idx3-ubyte.gz"
    write_idx(path, idx_arrays["train-labels"])
    _assert_error(idx_dir, str(path), "wrong magic number 0x00000801", "0x00000803")


def test_truncated_data(idx_dir):
    path = idx_dir / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-7]))
    _assert_error(idx_dir, str(path), "truncated data", "(40, 6, 5)")


def test_huge_header_byte_count_is_exact(idx_dir):
    path = idx_dir / "train-images-idx3-ubyte.gz"
    side = 2**32 - 1
    header = bytes([0, 0, 8, 3]) + side.to_bytes(4, "big") * 3
    path.write_bytes(gzip.compress(header + bytes(100)))
    # 16 header bytes plus (2**32 - 1)**3 pixels, which int64 cannot hold.
    _assert_error(idx_dir, str(path), f"needs {16 + side**3} bytes")


def test_truncated_header(idx_dir):
    path = idx_dir / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0])))
    _assert_error(idx_dir, str(path), "truncated header")


def test_truncated_gzip_stream(idx_dir):
    path = idx_dir / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    _assert_error(idx_dir, str(path), "gzip data is truncated or corrupt")


def test_trailing_bytes(idx_dir):
    path = idx_dir / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\x00\x01"))
    _assert_error(idx_dir, str(path), "2 bytes after the data")


def test_label_out_of_range(idx_dir, idx_arrays):
    labels = idx_arrays["t10k-labels"].copy()
    labels[13] = 10
    path = idx_dir / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, labels)
    _assert_error(idx_dir, str(path), "label 10 at index 13 is out of range 0..9")


def test_image_label_count_mismatch(idx_dir, idx_arrays):
    write_idx(idx_dir / "train-labels-idx1-ubyte.gz", idx_arrays["train-labels"][:-1])
    _assert_error(idx_dir, "has 40 images but", "has 39 labels")


def test_split_image_size_mismatch(idx_dir, idx_arrays):
    write_idx(idx_dir / "t10k-images-idx3-ubyte.gz", np.zeros((20, 6, 6), np.uint8))
    _assert_error(idx_dir, "train images are (6, 5) but test images are (6, 6)")


def test_second_load_uses_cache(idx_dir, monkeypatch):
    first = load_dataset("mnist", idx_dir, validation=5)

    def fail(*args, **kwargs):
        raise AssertionError("the files were read again")

    monkeypatch.setattr("slstm.data.idx.read_idx_dataset", fail)
    again = load_dataset("mnist", idx_dir, validation=5)
    torch.testing.assert_close(again.train.inputs, first.train.inputs)
    torch.testing.assert_close(again.validation.targets, first.validation.targets)


def test_changed_file_is_read_again(idx_dir, idx_arrays):
    load_dataset("mnist", idx_dir)
    labels = idx_arrays["t10k-labels"][:-1]
    write_idx(idx_dir / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match="has 20 images but"):
        load_dataset("mnist", idx_dir)
