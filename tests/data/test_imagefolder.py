"""Image folders: scanning, lazy decoding, crops, worker processes and errors."""

import itertools
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from slstm.data import DataError, batch_iterator, evaluation_batches, load_dataset
from slstm.data.imagefolder import ImageFolderSplit, decode_image

COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fish": (0, 0, 255)}


def _save(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), colour).save(path)


def _pixels(data, inputs):
    """Undo the normalisation: ``(B, 3, S, S)`` back to [0, 1] pixels."""
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    return inputs.cpu() * std + mean


def test_scan_classes_and_counts(image_folder):
    data = load_dataset("imagefolder", image_folder, image_size=8, num_workers=0)
    assert data.class_names == ["cat", "dog", "fish"]
    assert data.num_classes == 3
    assert data.input_shape == (3, 8, 8)
    assert isinstance(data.train, ImageFolderSplit)
    assert len(data.train) == 12
    assert len(data.test) == 6
    assert data.validation is None
    assert data.train.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_statistics_from_train_images(image_folder):
    data = load_dataset("imagefolder", image_folder, image_size=8, num_workers=0)
    # Each channel is 1 in a third of the images and 0 elsewhere (JPEG rounds a
    # little), so mean 1/3 and std sqrt(2)/3.
    assert data.mean == pytest.approx((1 / 3,) * 3, abs=0.01)
    assert data.std == pytest.approx((2**0.5 / 3,) * 3, abs=0.01)


def test_images_decode_to_class_colour(image_folder):
    data = load_dataset("imagefolder", image_folder, image_size=8, num_workers=0)
    for split in (data.train, data.test):
        for index in range(len(split)):
            image, label = split[index]
            assert image.shape == (3, 8, 8)
            assert image.dtype == torch.float32
            pixels = _pixels(data, image[None])[0]
            expected = torch.tensor(COLOURS[data.class_names[label]]) / 255
            # JPEG shifts solid colours by a few levels.
            torch.testing.assert_close(
                pixels.mean(dim=(1, 2)), expected.float(), atol=0.03, rtol=0
            )


def test_decode_resizes_then_crops_center(tmp_path):
    # 40x20: red columns 0-7, green 8-31, blue 32-39. Resizing the shorter side
    # to 8 gives 16x8, and the center 8x8 crop contains only green.
    image = Image.new("RGB", (40, 20), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 8, 20))
    image.paste((0, 0, 255), (32, 0, 40, 20))
    image.save(tmp_path / "bands.png")
    decoded = decode_image(str(tmp_path / "bands.png"), 8)
    assert decoded.shape == (3, 8, 8)
    torch.testing.assert_close(decoded[1], torch.ones(8, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(decoded[0], torch.zeros(8, 8), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_decode_converts_to_rgb(tmp_path, mode):
    path = tmp_path / f"image_{mode}.png"
    Image.new("RGB", (12, 10), (200, 200, 200)).convert(mode).save(path)
    decoded = decode_image(str(path), 6)
    assert decoded.shape == (3, 6, 6)
    assert decoded.mean().item() == pytest.approx(200 / 255, abs=0.01)


def test_decode_scales_16_bit_grey(tmp_path):
    path = tmp_path / "grey16.png"
    wide = np.full((10, 12), 40000, dtype=np.uint16)
    Image.fromarray(wide).save(path)  # mode I;16
    with Image.open(path) as reread:
        assert reread.mode.startswith("I;16")
    decoded = decode_image(str(path), 6)
    # 40000 of 65535 is about 0.61, not white (1.0) as clipping at 255 gives.
    assert decoded.mean().item() == pytest.approx(40000 / 65535, abs=0.005)


def test_decode_rejects_float_pixels(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path)  # mode F
    with pytest.raises(DataError, match="'F'-mode image .* has no fixed range"):
        decode_image(str(path), 4)


def test_batches_with_workers_reproducible(image_folder):
    data = load_dataset("imagefolder", image_folder, image_size=8, num_workers=2)

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return list(
            itertools.islice(batch_iterator(data.train, 5, generator=generator), 4)
        )

    first, again = draw(3), draw(3)
    for (inputs, targets), (inputs_again, targets_again) in zip(
        first, again, strict=True
    ):
        assert inputs.shape == (5, 3, 8, 8)
        assert targets.dtype == torch.int64
        torch.testing.assert_close(inputs, inputs_again)
        assert targets.tolist() == targets_again.tolist()
        # Every image has its class's colour, so the batch decoded the right files.
        colours = _pixels(data, inputs).mean(dim=(2, 3)).argmax(dim=1)
        assert colours.tolist() == targets.tolist()
    assert [t.tolist() for _, t in first] != [t.tolist() for _, t in draw(4)]


def test_evaluation_covers_test_split(image_folder):
    data = load_dataset("imagefolder", image_folder, image_size=8, num_workers=0)
    targets = torch.cat([t for _, t in evaluation_batches(data.test, 4)])
    assert targets.tolist() == [0, 0, 1, 1, 2, 2]


def test_class_subset_and_validation(image_folder):
    data = load_dataset(
        "imagefolder",
        image_folder,
        classes=["fish", "cat"],
        validation=2,
        seed=1,
        image_size=8,
        num_workers=0,
    )
    assert data.class_names == ["fish", "cat"]
    assert len(data.train) + len(data.validation) == 8
    assert len(data.validation) == 2
    assert len(data.test) == 4
    train_paths = {p for p, _ in data.train.samples}
    validation_paths = {p for p, _ in data.validation.samples}
    assert not train_paths & validation_paths
    for path, label in data.train.samples + data.test.samples:
        assert f"/{data.class_names[label]}/" in path


def test_unreadable_image_at_load(image_folder):
    # Loading decodes a sample of the train images for the statistics, and this
    # small folder is sampled whole.
    (image_folder / "train" / "dog" / "broken.jpg").write_bytes(b"not a JPEG file")
    with pytest.raises(DataError, match="broken.jpg: unreadable image"):
        load_dataset("imagefolder", image_folder, image_size=8, num_workers=0)


def test_unreadable_image_in_worker(image_folder):
    data = load_dataset("imagefolder", image_folder, image_size=8, num_workers=1)
    bad = image_folder / "train" / "dog" / "1.JPG"
    bad.write_bytes(b"not a JPEG file")
    index = [p for p, _ in data.train.samples].index(str(bad))
    with pytest.raises(DataError, match="1.JPG: unreadable image"):
        data.train[index]
    # A batch of the whole split must contain the file; the worker's DataError
    # reaches this process with its message.
    batches = batch_iterator(data.train, 12, generator=torch.Generator())
    with pytest.raises(DataError, match="1.JPG: unreadable image"):
        next(batches)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 256, (30, 30, 3), np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.png: unreadable image.*valid JPEG or PNG"):
        decode_image(str(path), 8)


def _expect_layout_error(root, fragment):
    with pytest.raises(DataError, match=fragment):
        load_dataset("imagefolder", root, image_size=8, num_workers=0)


def test_missing_val_folder(image_folder):
    shutil.rmtree(image_folder / "val")
    _expect_layout_error(image_folder, "missing folder val/")


def test_class_without_images(image_folder):
    (image_folder / "train" / "bird").mkdir()
    (image_folder / "train" / "bird" / "notes.txt").write_text("no images here")
    _expect_layout_error(image_folder, "bird: no images")


def test_unknown_val_class(image_folder):
    (image_folder / "val" / "cow").mkdir()
    _expect_layout_error(image_folder, "class 'cow' is not among the 3 class folders")


def test_unknown_class_name(image_folder):
    with pytest.raises(ValueError, match="class 'cow' in classes"):
        load_dataset("imagefolder", image_folder, classes=["cat", "cow"], num_workers=0)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="directory not found"):
        load_dataset("imagefolder", tmp_path / "absent")


def test_no_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset("imagefolder", tmp_path)


@pytest.mark.parametrize("image_size", [0, 2.5, True])
def test_invalid_image_size(image_folder, image_size):
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_dataset("imagefolder", image_folder, image_size=image_size)


def test_nested_folders_and_link_cycle(image_folder):
    nested = image_folder / "train" / "cat" / "more" / "deeper"
    _save(nested / "n.png", COLOURS["cat"])
    # A link back to the class folder must not make the scan endless.
    (nested / "loop").symlink_to(image_folder / "train" / "cat")
    data = load_dataset("imagefolder", image_folder, image_size=8, num_workers=0)
    cat_paths = [p for p, label in data.train.samples if label == 0]
    assert len(cat_paths) == 5
    assert str(nested / "n.png") in cat_paths
    for path in cat_paths:
        assert "loop" not in path


def test_hidden_and_other_files_ignored(image_folder):
    (image_folder / "train" / "dog" / "notes.txt").write_text("not an image")
    _save(image_folder / "train" / "dog" / ".hidden.png", COLOURS["dog"])
    _save(image_folder / "train" / ".cache" / "x.png", COLOURS["dog"])
    data = load_dataset("imagefolder", image_folder, image_size=8, num_workers=0)
    assert data.class_names == ["cat", "dog", "fish"]
    assert len(data.train) == 12
