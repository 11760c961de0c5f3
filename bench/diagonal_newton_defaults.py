"""Sweep DiagonalNewton's learning rate and damping on real Fashion-MNIST.

Trains ``mnist_cnn`` with minibatches of 64 for ``--steps`` steps on three seeds
per setting and prints, per seed, the mean loss of the first and last 10 steps,
the peak loss and the steps completed. A setting is ``ok`` when every seed
finishes, ends below where it started and never exceeds twice its start.

    PYTHONPATH=src python bench/diagonal_newton_defaults.py --widths 16,64 \
        --lrs 1e-3 --eps 1e-4,1e-3,3e-3,1e-2
"""

import argparse
import itertools
import math
import time

import torch

from slstm.curvature import backward
from slstm.data import batch_iterator, load_dataset
from slstm.models import build_model
from slstm.optim import DiagonalNewton


def floats(text):
    return [float(value) for value in text.split(",")]


def run_seed(data, width, lr, eps, seed, steps):
    """Return (first-10 mean, last-10 mean, peak, steps done) of one training run."""
    torch.manual_seed(seed)
    model = build_model("mnist_cnn", (1, 28, 28), 10, channels=width)
    optimizer = DiagonalNewton(model.parameters(), lr=lr, eps=eps, check_inputs=False)
    batches = batch_iterator(
        data.train, 64, generator=torch.Generator().manual_seed(seed)
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        inputs, targets = next(batches)
        optimizer.zero_grad()
        losses.append(float(backward(model, loss_fn, inputs, targets)))
        # A loss above 20 is far past ln 10 = 2.3: the run has diverged.
        if not math.isfinite(losses[-1]) or losses[-1] > 20:
            break
        optimizer.step()
    first = sum(losses[:10]) / min(10, len(losses))
    last = sum(losses[-10:]) / 10 if len(losses) == steps else math.nan
    return first, last, max(losses), len(losses)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--widths", default="16,64", help="mnist_cnn channels")
    parser.add_argument("--lrs", type=floats, default=[1e-3])
    parser.add_argument("--eps", type=floats, default=[1e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    widths = [int(width) for width in args.widths.split(",")]
    for width, lr, eps in itertools.product(widths, args.lrs, args.eps):
        started = time.perf_counter()
        results = [
            run_seed(data, width, lr, eps, seed, args.steps)
            for seed in range(args.seeds)
        ]
        ok = all(
            done == args.steps and last < first and peak < 2 * first
            for first, last, peak, done in results
        )
        runs = " ".join(
            f"[{first:.3f}->{last:.3f} peak {peak:.2f} steps {done}]"
            for first, last, peak, done in results
        )
        seconds = time.perf_counter() - started
        print(f"channels={width} lr={lr:g} eps={eps:g} ok={ok} {runs} {seconds:.0f}s")


if __name__ == "__main__":
    main()
