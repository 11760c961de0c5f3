"""Minibatches from in-memory and streaming splits, reproducible from a generator."""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from slstm.data.splits import TensorSplit


def _check_batch_size(batch_size, size: int, drop_last: bool) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    if size == 0:
        raise ValueError("the split is empty, so it has no batches to draw")
    if drop_last and batch_size > size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the split's {size} examples, "
            "so drop_last=True leaves no batch; use a smaller batch_size or "
            "drop_last=False"
        )
    return int(batch_size)


def _permutation(size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(size, generator=generator, device=generator.device)


class _EndlessBatchSampler:
    """Index batches of endless shuffled epochs, drawn from ``generator``.

    Runs in the main process, so the order depends only on the generator and not
    on how many workers decode the images.
    """

    def __init__(self, size: int, batch_size: int, generator, drop_last: bool):
        self.size = size
        self.batch_size = batch_size
        self.generator = generator
        self.drop_last = drop_last

    def __iter__(self):
        while True:
            order = _permutation(self.size, self.generator).tolist()
            stop = self.size - self.batch_size + 1 if self.drop_last else self.size
            for start in range(0, stop, self.batch_size):
                yield order[start : start + self.batch_size]


def batch_iterator(
    split: Dataset,
    batch_size: int,
    *,
    generator: torch.Generator,
    device=None,
    drop_last: bool = True,
    num_workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield random minibatches ``(inputs, targets)`` forever.

    Each epoch is a fresh permutation of the split drawn from ``generator``, so
    the same generator state gives the same batches. With ``drop_last`` every
    batch has ``batch_size`` examples and the last partial batch of each epoch
    is skipped. Otherwise it is yielded.

    Args:
        split: a :class:`TensorSplit` (batches are gathered by indexing its
            tensors on their device, with no Python loader) or any map-style
            dataset of ``(image, label)`` pairs such as an image folder (decoded
            by a ``DataLoader`` with ``num_workers`` worker processes).
        batch_size: examples per batch.
        generator: the source of randomness; a CPU or CUDA ``torch.Generator``.
        device: where the batches go; default: the split's device.
        drop_last: skip the last partial batch of each epoch.
        num_workers: worker processes for a streaming split; default: the
            split's ``num_workers`` attribute, else 0 (decode in this process).

    Returns:
        An endless iterator of float32 ``(B, C, H, W)`` inputs and int64 ``(B,)``
        targets.
    """
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator, got {type(generator).__name__}; "
            "pass torch.Generator().manual_seed(seed)"
        )
    batch_size = _check_batch_size(batch_size, len(split), drop_last)
    if isinstance(split, TensorSplit):
        return _tensor_batches(split, batch_size, generator, device, drop_last)
    workers = (
        num_workers if num_workers is not None else getattr(split, "num_workers", 0)
    )
    target = torch.device(device) if device is not None else _split_device(split)
    return _streamed_batches(split, batch_size, generator, target, drop_last, workers)


def _tensor_batches(split, batch_size, generator, device, drop_last):
    device = torch.device(device) if device is not None else split.device
    size = len(split)
    stop = size - batch_size + 1 if drop_last else size
    while True:
        # One permutation per epoch, moved once, so a step costs two gathers.
        order = _permutation(size, generator).to(split.device)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            inputs, targets = split.inputs[index], split.targets[index]
            if inputs.device != device:
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
            yield inputs, targets


def _split_device(split) -> torch.device:
    return torch.device(getattr(split, "device", "cpu"))


def _streamed_batches(split, batch_size, generator, device, drop_last, num_workers):
    sampler = _EndlessBatchSampler(len(split), batch_size, generator, drop_last)
    loader = DataLoader(
        split,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    for inputs, targets in loader:
        yield (
            inputs.to(device, non_blocking=True),
            targets.to(device, non_blocking=True),
        )


def evaluation_batches(
    split: Dataset,
    batch_size: int,
    *,
    device=None,
    num_workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield the whole split once, in order, in batches of up to ``batch_size``.

    For computing test loss and error: every example appears exactly once and the
    last batch may be smaller.
    """
    batch_size = _check_batch_size(batch_size, len(split), drop_last=False)
    if isinstance(split, TensorSplit):
        device = torch.device(device) if device is not None else split.device
        for start in range(0, len(split), batch_size):
            inputs = split.inputs[start : start + batch_size].to(device)
            yield inputs, split.targets[start : start + batch_size].to(device)
        return
    workers = (
        num_workers if num_workers is not None else getattr(split, "num_workers", 0)
    )
    device = torch.device(device) if device is not None else _split_device(split)
    loader = DataLoader(
        split,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for inputs, targets in loader:
        yield (
            inputs.to(device, non_blocking=True),
            targets.to(device, non_blocking=True),
        )
