"""ImageNet-style image folders, decoded lazily with Pillow.

Layout::

    root/train/<class name>/<image>.jpg|.jpeg|.png
    root/val/<class name>/<image>.jpg|.jpeg|.png

Classes are the folder names under ``train/``, sorted, labelled ``0..K-1``; ``val/``
is the test split and may use any subset of them. Images may sit in nested
folders below their class folder. Each image is converted to RGB, resized so its
shorter side is ``image_size`` pixels and center-cropped to ``image_size`` ×
``image_size``. Decoding happens in ``__getitem__``, which a ``DataLoader`` runs
in worker processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from slstm.data.batching import load_batches
from slstm.data.splits import (
    DataError,
    DataSplits,
    resolve_classes,
    split_validation,
    validation_size,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Images decoded to estimate the per-channel mean and std of the train split.
# NOTE: an estimate from at most this many images, not the exact statistics.
STATISTICS_SAMPLE_SIZE = 512


def decode_image(path: str, image_size: int) -> torch.Tensor:
    """Decode one image into a float32 tensor ``(3, image_size, image_size)`` in [0, 1].

    The shorter side is resized to ``image_size`` (bilinear), then the center
    square is cropped.

    Raises:
        DataError: Pillow cannot open or decode the file (not an image,
            truncated, unsupported format).
    """
    try:
        with Image.open(path) as image:
            # For JPEG, let the decoder downscale by a power of two (keeping both
            # sides >= image_size), so a large photo is never decoded at full size.
            image.draft("RGB", (image_size, image_size))
            image = _to_8_bit(image, path).convert("RGB")
            width, height = image.size
            scale = image_size / min(width, height)
            resized = (
                max(image_size, round(width * scale)),
                max(image_size, round(height * scale)),
            )
            image = image.resize(resized, Image.Resampling.BILINEAR)
            left = (resized[0] - image_size) // 2
            top = (resized[1] - image_size) // 2
            image = image.crop((left, top, left + image_size, top + image_size))
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow raises UnidentifiedImageError (an OSError) for unknown formats,
        # OSError for truncated data and SyntaxError for some malformed headers.
        raise DataError(
            f"{path}: unreadable image ({type(exc).__name__}: {exc}); replace the "
            "file with a valid JPEG or PNG image or delete it"
        ) from exc
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)


# Pillow modes of 16-bit greyscale images (PNG stores them as I;16 or I;16B).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_8_bit(image: Image.Image, path: str) -> Image.Image:
    """Scale a 16-bit greyscale image to 8 bits; reject modes with no fixed range.

    ``convert("RGB")`` would clip 16-bit values at 255, so most images would
    come out white.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.uint16)
        return Image.fromarray((wide / 257.0).round().astype(np.uint8))  # mode L
    if image.mode in ("I", "F"):
        raise DataError(
            f"{path}: a {image.mode!r}-mode image (32-bit integer or float pixels) "
            "has no fixed range to scale to [0, 1]; save it as an 8- or 16-bit "
            "PNG or as a JPEG"
        )
    return image


class ImageFolderSplit(Dataset):
    """A split of an image folder whose images are decoded on access.

    Attributes:
        samples: ``(path, label)`` pairs, in a fixed order.
        targets: int64 labels ``(N,)`` on the CPU, one per sample.
        image_size: side of the square crop, in pixels.
        mean, std: per-channel statistics ``(3,)`` used to normalise each image.
        device: where :func:`~slstm.data.batch_iterator` sends batches by default.
        num_workers: worker processes :func:`~slstm.data.batch_iterator` uses.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        image_size: int,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        *,
        device="cpu",
        num_workers: int = 0,
    ):
        self.samples = list(samples)
        self.targets = torch.tensor(
            [label for _, label in self.samples], dtype=torch.int64
        )
        self.image_size = int(image_size)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.device = torch.device(device)
        self.num_workers = int(num_workers)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        image = decode_image(path, self.image_size)
        return image.sub_(self.mean).div_(self.std), label

    def __repr__(self) -> str:
        size = self.image_size
        return f"ImageFolderSplit({len(self)} images, decoded to 3x{size}x{size})"


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(class_dir: Path) -> list[str]:
    """Return the image files below ``class_dir``, sorted, following links.

    A folder reached twice through symbolic links is listed once, so a link
    cycle cannot make the walk endless.
    """
    found = []
    visited = set()
    for folder, subfolders, files in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [os.path.join(folder, f) for f in sorted(files) if _is_image(f)]
    return found


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(split_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def scan_image_folder(root: Path, fix: str):
    """Return ``(class_names, train_samples, test_samples)`` of an image folder.

    Raises:
        DataError: ``train/`` or ``val/`` is missing, ``train/`` has no class
            folders or a class without images, or ``val/`` has a class that
            ``train/`` lacks.
    """
    if not root.is_dir():
        raise DataError(f"{root}: directory not found; {fix}")
    train_dir, val_dir = root / "train", root / "val"
    for split_dir in (train_dir, val_dir):
        if not split_dir.is_dir():
            raise DataError(
                f"{root}: missing folder {split_dir.name}/ with one subfolder of "
                f"images per class; {fix}"
            )
    class_names = _class_folders(train_dir)
    if not class_names:
        raise DataError(f"{train_dir}: no class folders found; {fix}")
    train_samples = []
    for label, name in enumerate(class_names):
        images = _list_images(train_dir / name)
        if not images:
            raise DataError(
                f"{train_dir / name}: no images (expected files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}, any case); add images or remove "
                "the folder"
            )
        train_samples += [(path, label) for path in images]
    labels = {name: label for label, name in enumerate(class_names)}
    test_samples = []
    for name in _class_folders(val_dir):
        if name not in labels:
            raise DataError(
                f"{val_dir / name}: class {name!r} is not among the {len(labels)} "
                f"class folders of {train_dir}; rename or remove it"
            )
        test_samples += [(path, labels[name]) for path in _list_images(val_dir / name)]
    if not test_samples:
        raise DataError(f"{val_dir}: no images in any class folder; {fix}")
    return class_names, train_samples, test_samples


def estimate_statistics(
    split: ImageFolderSplit, seed: int, num_workers: int
) -> tuple[list[float], list[float]]:
    """Estimate the per-channel mean and std of ``split`` from a seeded sample.

    Decodes up to :data:`STATISTICS_SAMPLE_SIZE` images chosen by ``seed`` and
    returns the mean and (population) std of their pixels, in [0, 1] units.
    """
    generator = torch.Generator().manual_seed(int(seed))
    count = min(len(split), STATISTICS_SAMPLE_SIZE)
    chosen = torch.randperm(len(split), generator=generator)[:count].tolist()
    raw = ImageFolderSplit([split.samples[i] for i in chosen], split.image_size)
    batches = load_batches(
        raw, num_workers=num_workers, device=torch.device("cpu"), batch_size=64
    )
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for images, _ in batches:
        images = images.double()
        total += images.sum(dim=(0, 2, 3))
        total_sq += images.square().sum(dim=(0, 2, 3))
        pixels += images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / pixels
    std = (total_sq / pixels - mean.square()).clamp_min(0).sqrt()
    # A constant channel would divide by zero, so it is left unscaled instead.
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def default_num_workers() -> int:
    """Return the number of decoding processes: one per CPU core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def load_image_folder(
    root: Path,
    *,
    classes,
    validation,
    seed: int,
    device,
    image_size: int,
    num_workers: int | None,
    fix: str,
) -> DataSplits:
    """Scan an image folder and return streaming splits (see :func:`load_dataset`)."""
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if num_workers is None:
        num_workers = default_num_workers()
    if (
        isinstance(num_workers, bool)
        or not isinstance(num_workers, int)
        or num_workers < 0
    ):
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")

    class_names, train_samples, test_samples = scan_image_folder(Path(root), fix)
    chosen = resolve_classes(classes, class_names)
    relabel = {original: new for new, original in enumerate(chosen)}
    train_samples = [(p, relabel[y]) for p, y in train_samples if y in relabel]
    test_samples = [(p, relabel[y]) for p, y in test_samples if y in relabel]

    count = validation_size(validation, len(train_samples))
    keep, held_out = split_validation(len(train_samples), count, seed)
    held_samples = [train_samples[i] for i in held_out]
    train_samples = [train_samples[i] for i in keep]

    def make(samples, mean=(0.0,) * 3, std=(1.0,) * 3):
        return ImageFolderSplit(
            samples, image_size, mean, std, device=device, num_workers=num_workers
        )

    mean, std = estimate_statistics(make(train_samples), seed, num_workers)
    return DataSplits(
        name="imagefolder",
        train=make(train_samples, mean, std),
        validation=make(held_samples, mean, std) if count > 0 else None,
        test=make(test_samples, mean, std),
        num_classes=len(chosen),
        input_shape=(3, image_size, image_size),
        class_names=[class_names[c] for c in chosen],
        mean=tuple(mean),
        std=tuple(std),
    )
