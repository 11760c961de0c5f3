"""Containers for loaded data and the steps every reader shares.

A reader returns :class:`RawData`: uint8 or float images in ``[0, 1]`` scale with
integer labels, for a train and a test split. :func:`finish_in_memory` then picks
the class subset, carves the validation split, normalises with the train split's
per-channel mean and standard deviation and moves the tensors to the device.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """A data set that cannot be read: missing, corrupt or inconsistent files.

    The message names the path, the file expected, what was wrong and the fix.
    """


class ValidationSizeError(ValueError):
    """A validation count that does not fit the training split.

    Attributes:
        requested: the count asked for.
        train_size: the training examples it had to be carved from.
    """

    def __init__(self, requested: int, train_size: int):
        super().__init__(
            f"validation={requested} is out of range: the training split has "
            f"{train_size} examples, so choose 0..{train_size - 1}"
        )
        self.requested = requested
        self.train_size = train_size


class TensorSplit(Dataset):
    """One split held in memory as two tensors on the same device.

    Attributes:
        inputs: float32 images ``(N, C, H, W)``, normalised per channel.
        targets: int64 class labels ``(N,)`` in ``0..num_classes-1``.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        if inputs.ndim != 4:
            raise ValueError(
                f"inputs must have shape (N, C, H, W), got {tuple(inputs.shape)}"
            )
        if targets.shape != (inputs.shape[0],):
            raise ValueError(
                f"targets must have shape ({inputs.shape[0]},) to match the inputs, "
                f"got {tuple(targets.shape)}"
            )
        if inputs.device != targets.device:
            raise ValueError(
                f"inputs are on {inputs.device} but targets on {targets.device}; "
                "move both to one device"
            )
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index):
        return self.inputs[index], self.targets[index]

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def to(self, device) -> TensorSplit:
        """Return this split with both tensors on ``device``."""
        return TensorSplit(self.inputs.to(device), self.targets.to(device))

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.inputs.shape[1:])
        return f"TensorSplit({len(self)} images of {shape} on {self.device})"


@dataclass
class DataSplits:
    """The splits of one data set and what a model needs to know about them.

    Attributes:
        name: the registry name, e.g. ``"fashion-mnist"``.
        train: the training split (without the validation examples).
        validation: examples carved from the original training split, or None.
        test: the official test split (``val/`` for an image folder).
        num_classes: number of classes after choosing a subset.
        input_shape: ``(C, H, W)`` of one image.
        class_names: one name per label, in label order.
        mean, std: the per-channel statistics of ``train`` used to normalise
            every split (before normalisation, pixels are in ``[0, 1]``).
    """

    name: str
    train: Dataset
    validation: Dataset | None
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str]
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __repr__(self) -> str:
        sizes = f"train={len(self.train)}"
        if self.validation is not None:
            sizes += f", validation={len(self.validation)}"
        sizes += f", test={len(self.test)}"
        shape = "x".join(str(s) for s in self.input_shape)
        return (
            f"DataSplits({self.name!r}, {sizes}, input {shape}, "
            f"{self.num_classes} classes)"
        )


@dataclass
class RawData:
    """A data set as read from its files, before any selection or normalisation.

    Images are ``(N, C, H, W)``: uint8 (0..255) or float in ``[0, 1]``.
    Labels are int64 ``(N,)`` in ``0..len(class_names)-1``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


def resolve_classes(classes, class_names: Sequence[str]) -> list[int]:
    """Return the chosen original class ids, in the order of their new labels.

    ``classes`` is None (all classes), an int ``k`` (the first ``k`` classes) or a
    sequence of distinct class ids or class names. The i-th chosen class becomes
    label ``i``.
    """
    total = len(class_names)
    if classes is None:
        return list(range(total))
    if isinstance(classes, bool):
        raise ValueError(f"classes must be None, an int or a sequence, got {classes!r}")
    if isinstance(classes, numbers.Integral):
        k = int(classes)
        if not 2 <= k <= total:
            raise ValueError(
                f"classes={k} is out of range: choose between 2 and {total} classes "
                "(a classifier needs at least two)"
            )
        return list(range(k))
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ValueError(
            f"classes must be None, an int or a sequence of class ids, got {classes!r}"
        )
    chosen = []
    for c in classes:
        if isinstance(c, str):
            if c not in class_names:
                raise ValueError(
                    f"class {c!r} in classes={list(classes)} is not a class of this "
                    f"data set; its classes are {_first_names(class_names)}"
                )
            chosen.append(class_names.index(c))
            continue
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            raise ValueError(f"class id {c!r} in classes={classes!r} is not an int")
        if not 0 <= c < total:
            raise ValueError(
                f"class id {c} in classes={list(classes)} is out of range: "
                f"this data set has classes 0..{total - 1}"
            )
        chosen.append(int(c))
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"classes={list(classes)} lists a class more than once")
    if len(chosen) < 2:
        raise ValueError(
            f"classes={list(classes)} chooses {len(chosen)} class; "
            "a classifier needs at least two"
        )
    return chosen


def _first_names(class_names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(class_names[:limit])
    if len(class_names) > limit:
        shown += f", ... ({len(class_names)} in all)"
    return shown


def select_classes(labels: np.ndarray, chosen: Sequence[int]) -> tuple:
    """Return ``(indices, new_labels)`` of the examples whose class is chosen.

    ``new_labels[i]`` is the position of the example's class in ``chosen``.
    """
    lookup = np.full(max(int(labels.max(initial=0)), max(chosen)) + 1, -1, np.int64)
    lookup[list(chosen)] = np.arange(len(chosen))
    relabelled = lookup[labels]
    indices = np.flatnonzero(relabelled >= 0)
    return indices, relabelled[indices]


def validation_size(validation, train_size: int) -> int:
    """Convert ``validation`` (a count or a fraction of the train split) to a count."""
    if isinstance(validation, bool):
        raise ValueError(f"validation must be an int or a float, got {validation!r}")
    if isinstance(validation, numbers.Integral):
        count = int(validation)
        if not 0 <= count < train_size:
            raise ValidationSizeError(count, train_size)
        return count
    if isinstance(validation, numbers.Real):
        if not 0.0 <= validation < 1.0:
            raise ValueError(
                f"validation={validation} is out of range: a fraction must be in "
                "[0, 1), or pass an int count"
            )
        count = int(round(validation * train_size))
        if count >= train_size:
            raise ValueError(
                f"validation={validation} of {train_size} training examples leaves "
                "none for training; use a smaller fraction"
            )
        return count
    raise ValueError(
        f"validation must be an int count or a float fraction, got {validation!r}"
    )


def split_validation(train_size: int, count: int, seed: int) -> tuple:
    """Return ``(train_indices, validation_indices)``, each sorted, chosen by seed.

    The same ``seed`` and sizes give the same split on every machine, because the
    permutation comes from a CPU ``torch.Generator``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    permutation = torch.randperm(train_size, generator=generator).numpy()
    validation = np.sort(permutation[:count])
    train = np.sort(permutation[count:])
    return train, validation


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return per-channel mean and std ``(C,)`` of images ``(N, C, H, W)`` in [0, 1].

    Converts one channel at a time to float64, so a large uint8 array needs at
    most one channel's worth of extra memory.
    """
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    means, stds = [], []
    for c in range(images.shape[1]):
        channel = images[:, c].astype(np.float64) / scale
        means.append(channel.mean())
        stds.append(channel.std())
    mean = np.asarray(means)
    # A constant channel would divide by zero, so it is left unscaled instead.
    std = np.where(np.asarray(stds) > 1e-8, stds, 1.0)
    return mean, std


def to_normalised_tensor(images: np.ndarray, mean, std, device) -> torch.Tensor:
    """Convert images ``(N, C, H, W)`` to float32 ``(x - mean) / std`` on device."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    tensor = tensor.to(torch.float32).div_(scale)
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(shape)
    return tensor.sub_(mean_t).div_(std_t)


def finish_in_memory(
    name: str, raw: RawData, *, classes, validation, seed: int, device
) -> DataSplits:
    """Turn ``raw`` into :class:`DataSplits` of :class:`TensorSplit` on ``device``.

    Steps, in order: keep the chosen classes (relabelled ``0..k-1``), carve the
    validation examples from train by ``seed``, compute the mean and std of the
    remaining train examples, normalise every split with them.
    """
    device = torch.device(device)
    chosen = resolve_classes(classes, raw.class_names)
    train_idx, train_labels = select_classes(raw.train_labels, chosen)
    test_idx, test_labels = select_classes(raw.test_labels, chosen)
    present = set(np.unique(np.asarray(train_labels)).tolist())
    empty = [chosen[label] for label in range(len(chosen)) if label not in present]
    if empty:
        # A class without examples would still count as an output, silently
        # changing the task (and breaking per-task class subsets).
        named = ", ".join(f"{c} ({raw.class_names[c]!r})" for c in empty)
        raise ValueError(
            f"{name} has no training examples of class {named}, out of the "
            f"chosen classes {list(chosen)}; pick classes that have examples "
            "(the --classes option of slstm train, meta-train and info, e.g. "
            "--classes 0,1,2), or add examples of the missing classes"
        )
    count = validation_size(validation, len(train_idx))
    keep, held_out = split_validation(len(train_idx), count, seed)

    train_images = raw.train_images[train_idx[keep]]
    mean, std = channel_statistics(train_images)

    def make(images, labels):
        inputs = to_normalised_tensor(images, mean, std, device)
        targets = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        return TensorSplit(inputs, targets)

    train = make(train_images, train_labels[keep])
    held = None
    if count > 0:
        held = make(raw.train_images[train_idx[held_out]], train_labels[held_out])
    test = make(raw.test_images[test_idx], test_labels)
    return DataSplits(
        name=name,
        train=train,
        validation=held,
        test=test,
        num_classes=len(chosen),
        input_shape=tuple(int(s) for s in raw.train_images.shape[1:]),
        class_names=[raw.class_names[c] for c in chosen],
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
