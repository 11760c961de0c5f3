"""CIFAR-10 python batches: directory and archive layouts, safe unpickling, errors."""

import os
import pickle
import struct

import numpy as np
import pytest

from slstm.data import DataError, load_dataset
from slstm.data.cifar import RestrictedUnpickler


def _assert_loaded(data, cifar_arrays):
    train, train_labels, test, test_labels = cifar_arrays
    mean = (train / 255.0).mean(axis=(0, 2, 3))
    std = (train / 255.0).std(axis=(0, 2, 3))
    assert data.input_shape == (3, 32, 32)
    assert data.num_classes == 10
    assert data.mean == pytest.approx(tuple(mean))
    assert data.std == pytest.approx(tuple(std))
    expected = (train / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(data.train.inputs.numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(data.train.targets.numpy(), train_labels)
    assert len(data.test) == len(test)
    np.testing.assert_array_equal(data.test.targets.numpy(), test_labels)


def test_cifar_from_extracted_dir(cifar_dir, cifar_arrays):
    data = load_dataset("cifar10", cifar_dir)
    _assert_loaded(data, cifar_arrays)
    assert data.class_names[:2] == ["class0", "class1"]


def test_cifar_from_parent_dir(cifar_dir, cifar_arrays):
    _assert_loaded(load_dataset("cifar10", cifar_dir.parent), cifar_arrays)


def test_cifar_from_archive(tmp_path, cifar_dir, cifar_arrays, make_tar):
    archive = make_tar(cifar_dir, tmp_path / "cifar-10-python.tar.gz")
    _assert_loaded(load_dataset("cifar10", archive), cifar_arrays)
    holder = tmp_path / "holder"
    holder.mkdir()
    os.replace(archive, holder / archive.name)
    _assert_loaded(load_dataset("cifar10", holder), cifar_arrays)


def test_cifar_str_keys_without_meta(cifar_dir, cifar_arrays, write_cifar):
    # Batches pickled by Python 3 have str keys, and batches.meta is optional.
    train, train_labels, test, test_labels = cifar_arrays
    for i in range(5):
        rows = slice(4 * i, 4 * i + 4)
        write_cifar(
            cifar_dir / f"data_batch_{i + 1}",
            train[rows],
            train_labels[rows],
            python2=False,
        )
    write_cifar(cifar_dir / "test_batch", test, test_labels, python2=False)
    (cifar_dir / "batches.meta").unlink()
    data = load_dataset("cifar10", cifar_dir)
    _assert_loaded(data, cifar_arrays)
    assert data.class_names[0] == "airplane"
    assert data.class_names[9] == "truck"


def test_cifar_class_subset(cifar_dir):
    data = load_dataset("cifar10", cifar_dir, classes=[9, 0])
    assert data.class_names == ["class9", "class0"]
    assert sorted(data.train.targets.tolist()) == [0, 0, 1, 1]


def _expect_error(path, *fragments):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "cifar-10-python.tar.gz" in message
    return message


def test_cifar_needs_data_dir():
    with pytest.raises(DataError, match="data_dir is required"):
        load_dataset("cifar10")


def test_cifar_missing_batch(cifar_dir):
    (cifar_dir / "data_batch_4").unlink()
    _expect_error(cifar_dir, str(cifar_dir), "missing file data_batch_4")


def test_cifar_empty_dir(tmp_path):
    _expect_error(tmp_path, str(tmp_path), "missing file data_batch_1")


def test_cifar_truncated_batch(cifar_dir):
    path = cifar_dir / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    _expect_error(cifar_dir, str(path), "truncated or corrupt pickle")


def test_cifar_huge_length_field(cifar_dir):
    # A BINBYTES8 opcode that announces 2**62 bytes: the unpickler tries to
    # allocate them and raises MemoryError.
    path = cifar_dir / "data_batch_2"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"xx.")
    _expect_error(cifar_dir, str(path), "truncated or corrupt pickle (MemoryError")


def test_cifar_rejects_foreign_globals(cifar_dir, tmp_path):
    marker = tmp_path / "marker"

    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = cifar_dir / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    _expect_error(cifar_dir, str(path), "global posix.mkdir is not allowed")
    assert not marker.exists()


def test_cifar_label_out_of_range(cifar_dir, cifar_arrays, write_cifar):
    _, _, test, test_labels = cifar_arrays
    labels = test_labels.copy()
    labels[3] = 12
    write_cifar(cifar_dir / "test_batch", test, labels)
    _expect_error(cifar_dir, "label 12 at index 3 is out of range 0..9")


def test_cifar_count_mismatch(cifar_dir, cifar_arrays, write_cifar):
    _, _, test, test_labels = cifar_arrays
    write_cifar(cifar_dir / "test_batch", test, test_labels[:-1])
    _expect_error(cifar_dir, "6 images but 5 labels")


def test_cifar_wrong_row_length(cifar_dir, write_cifar):
    write_cifar(cifar_dir / "data_batch_1", np.zeros((4, 3, 16, 16), np.uint8), [0] * 4)
    _expect_error(cifar_dir, "rows have 768 values, expected 3072")


def test_cifar_not_a_dict(cifar_dir):
    (cifar_dir / "data_batch_5").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    _expect_error(cifar_dir, "expected a pickled dict, found list")


def test_cifar_truncated_archive(tmp_path, cifar_dir, make_tar):
    archive = make_tar(cifar_dir, tmp_path / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    _expect_error(archive, str(archive), "truncated or corrupt")


def test_restricted_unpickler_rebuilds_arrays():
    import io

    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    loaded = RestrictedUnpickler(
        io.BytesIO(pickle.dumps({"a": array}, protocol=2))
    ).load()
    np.testing.assert_array_equal(loaded["a"], array)


def test_restricted_unpickler_rejects_codecs_other_than_latin1():
    import io

    payload = (
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    )
    with pytest.raises(pickle.UnpicklingError, match="encoding 'rot13' is not allowed"):
        RestrictedUnpickler(io.BytesIO(payload)).load()


@pytest.mark.parametrize("protocol", [2, 5])
def test_restricted_unpickler_reads_python3_pickles(protocol):
    import io

    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    batch = {"data": array, "empty": b"", "labels": [1, 2, 3]}
    loaded = RestrictedUnpickler(
        io.BytesIO(pickle.dumps(batch, protocol=protocol))
    ).load()
    np.testing.assert_array_equal(loaded["data"], array)
    assert loaded["empty"] == b""


def test_cifar_class_names_of_other_encodings(cifar_dir):
    names = [f"class{i}".encode() for i in range(9)] + ["caf\xe9".encode("latin1")]
    with open(cifar_dir / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    data = load_dataset("cifar10", cifar_dir)
    assert data.class_names[9] == "caf\xe9"
