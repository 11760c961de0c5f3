"""Fixtures that write small data sets in each supported format."""

import io
import pickle
import struct

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


class Python2Pickler(pickle._Pickler):
    """A pickler that writes str and bytes as Python 2 byte strings.

    The official CIFAR-10 batches were pickled by Python 2, so their keys, dtype
    codes and array buffers are STRING opcodes, not Python 3's str and bytes.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_byte_string(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_byte_string
    dispatch[str] = save_byte_string


def write_cifar_batch(path, images, labels, *, python2=True):
    """Pickle one CIFAR-10 batch laid out like the official files.

    ``python2=False`` writes what ``pickle.dump(protocol=2)`` of Python 3 writes
    instead: str keys, and bytes through ``_codecs.encode``.
    """
    batch = {
        "batch_label": "test batch",
        "labels": [int(label) for label in labels],
        "data": images.reshape(len(images), -1),
        "filenames": [f"image_{i}.png" for i in range(len(images))],
    }
    if python2:
        buffer = io.BytesIO()
        Python2Pickler(buffer, protocol=2).dump(batch)
        # Python 2's numpy lived in numpy.core, not numpy._core.
        data = buffer.getvalue().replace(b"numpy._core.", b"numpy.core.")
    else:
        data = pickle.dumps(batch, protocol=2)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def cifar_arrays():
    """Five train batches of 4 images and a test batch of 6, labels cycling 0..9."""
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    test = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    return train, np.arange(20) % 10, test, np.arange(6) % 10


@pytest.fixture
def cifar_dir(tmp_path, cifar_arrays):
    """An extracted ``cifar-10-batches-py`` directory inside ``tmp_path / "cifar"``."""
    train, train_labels, test, test_labels = cifar_arrays
    directory = tmp_path / "cifar" / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for i in range(5):
        rows = slice(4 * i, 4 * i + 4)
        write_cifar_batch(
            directory / f"data_batch_{i + 1}", train[rows], train_labels[rows]
        )
    write_cifar_batch(directory / "test_batch", test, test_labels)
    names = [f"class{i}".encode() for i in range(10)]
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return directory


@pytest.fixture
def make_tar():
    """The function that archives a directory: ``make_tar(directory, archive_path)``."""
    import tarfile

    def make(directory, archive):
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(directory, arcname=directory.name)
        return archive

    return make


@pytest.fixture
def write_cifar():
    """The function that pickles a CIFAR-10 batch into a file.

    Called as ``write_cifar(path, images, labels)``.
    """
    return write_cifar_batch


# Solid colour of each class in the generated image folder.
FOLDER_COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fish": (0, 0, 255)}


def write_image(path, colour, size=(24, 18), mode="RGB"):
    """Save a solid-colour image; the format follows the file extension."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """``train/`` with 4 images per class and ``val/`` with 2, PNG and JPEG mixed."""
    root = tmp_path / "images"
    sizes = [(24, 18), (18, 30), (40, 40), (17, 23)]
    for name, colour in FOLDER_COLOURS.items():
        for i, size in enumerate(sizes):
            suffix = ".png" if i % 2 == 0 else ".JPG"
            write_image(root / "train" / name / f"{i}{suffix}", colour, size)
        for i in range(2):
            write_image(root / "val" / name / f"v{i}.png", colour, sizes[i])
    return root
