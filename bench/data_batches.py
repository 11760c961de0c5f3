"""Time drawing minibatches from an in-memory split against torch's DataLoader.

Prints the seconds per batch of ``slstm.data.batch_iterator`` on a TensorSplit,
of ``torch.utils.data.DataLoader`` (shuffle, no workers) over the same split,
and of one forward and backward pass of ``mnist_cnn`` (16 maps) on such a
batch, with the ratios between them. Uses Fashion-MNIST when it is installed,
else scikit-learn's digits.

    PYTHONPATH=src python bench/data_batches.py [--batch-size 64] [--batches 300]
"""

import argparse
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from slstm.data import batch_iterator, load_dataset
from slstm.models import build_model


def seconds_per_batch(batches, count: int) -> float:
    next(batches)  # The first batch includes start-up work, such as a permutation.
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return (time.perf_counter() - start) / count


def endless(loader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    name = "fashion-mnist"
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        name = "digits"
    data = load_dataset(name)
    split = data.train
    generator = torch.Generator().manual_seed(0)

    ours = seconds_per_batch(
        batch_iterator(split, args.batch_size, generator=generator), args.batches
    )
    loader = DataLoader(split, batch_size=args.batch_size, shuffle=True, drop_last=True)
    peer = seconds_per_batch(endless(loader), args.batches)

    model = build_model("mnist_cnn", data.input_shape, data.num_classes, channels=16)
    inputs, targets = next(batch_iterator(split, args.batch_size, generator=generator))
    loss_fn = nn.CrossEntropyLoss()

    def steps():
        while True:
            model.zero_grad()
            loss_fn(model(inputs), targets).backward()
            yield

    step = seconds_per_batch(steps(), max(20, args.batches // 10))

    print(f"data set {name}, {len(split)} train examples, batch {args.batch_size}")
    print("torch.set_num_threads(1)")
    print(f"batch_iterator (TensorSplit)      {ours * 1e6:10.1f} us/batch")
    print(f"DataLoader (shuffle, 0 workers)   {peer * 1e6:10.1f} us/batch")
    print(f"mnist_cnn channels=16 fwd+bwd     {step * 1e6:10.1f} us/step")
    print(f"DataLoader / batch_iterator       {peer / ours:10.1f}x")
    print(f"batch_iterator / training step    {ours / step:10.3f}")


if __name__ == "__main__":
    main()
