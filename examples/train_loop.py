"""Train the MNIST CNN on Fashion-MNIST with each optimizer in a plain PyTorch loop.

    PYTHONPATH=src python examples/train_loop.py --steps 200
    PYTHONPATH=src python examples/train_loop.py --optimizers adam,slstm \\
        --checkpoint slstm=path/to/slstm.pt

The loop is the ordinary one. The only change for the optimizers that read the
diagonal Hessian (diagonal-newton, slstm, slstm-hutchinson) is that
``slstm.curvature.backward`` replaces ``loss.backward()``: it sets ``p.grad`` and
``p.hessian_diag`` in one backward pass, with the estimator the optimizer was
built for (a learned optimizer's ``curvature_method``).
"""

import argparse
import sys
import time

import torch
from torch import nn

import slstm.curvature
import slstm.data
import slstm.models
import slstm.optim
from slstm.utils import resolve_device


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--optimizers",
        default=",".join(slstm.optim.OPTIMIZERS),
        help="comma-separated names from slstm.optim.OPTIMIZERS (default: all)",
    )
    parser.add_argument("--steps", type=int, default=100, help="training steps")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step")
    parser.add_argument(
        "--eval-examples",
        type=int,
        default=2000,
        help="test examples on which the final error is measured",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="checkpoint file for a learned optimizer (default: the shipped "
        "NAME-fashion-mnist); repeat for each",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=16,
        help="feature maps per convolution (default 16, the network the shipped "
        "learned optimizers were meta-trained on; 0 for the full-size network)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds model and batches")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice, usually every core)",
    )
    slstm.data.add_data_arguments(parser)
    return parser.parse_args(argv)


def make_optimizer(name, model, checkpoints):
    spec = slstm.optim.OPTIMIZERS[name]
    if spec.learned:
        # Learned optimizers read the kind (conv or fc) of each parameter from
        # the model's modules, so they take the model itself.
        return spec.make(model, checkpoint=checkpoints.get(name))
    return spec.make(model.parameters())


def train(name, splits, args, checkpoints, device):
    """Train a fresh network with optimizer ``name``; return the loss history and
    the test error."""
    torch.manual_seed(args.seed)
    sizes = {"channels": args.channels} if args.channels else {}
    model = slstm.models.build_model(
        "mnist_cnn", splits.input_shape, splits.num_classes, **sizes
    ).to(device)
    optimizer = make_optimizer(name, model, checkpoints)
    spec = slstm.optim.OPTIMIZERS[name]
    # A learned optimizer names the estimator its networks were trained on.
    method = getattr(optimizer, "curvature_method", None) or spec.curvature_method
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    batches = slstm.data.batch_iterator(
        splits.train, args.batch_size, generator=generator, device=device
    )

    losses = []
    for _, (inputs, targets) in zip(range(args.steps), batches, strict=False):
        optimizer.zero_grad()
        if spec.needs_curvature:
            loss = slstm.curvature.backward(model, loss_fn, inputs, targets, method)
        else:
            loss = loss_fn(model(inputs), targets)
            loss.backward()
        optimizer.step()
        losses.append(loss.item())

    with torch.no_grad():
        count = min(args.eval_examples, len(splits.test))
        inputs = splits.test.inputs[:count].to(device)
        targets = splits.test.targets[:count].to(device)
        error = (model(inputs).argmax(1) != targets).float().mean().item()
    return losses, error


def main(argv=None) -> int:
    args = parse_arguments(argv)
    names = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    unknown = [name for name in names if name not in slstm.optim.OPTIMIZERS]
    if unknown:
        print(
            f"unknown optimizers {unknown}; choose from {list(slstm.optim.OPTIMIZERS)}",
            file=sys.stderr,
        )
        return 2
    if args.channels < 0:
        print(f"--channels must be >= 0, got {args.channels}", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"--threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    checkpoints = {}
    for entry in args.checkpoint:
        name, separator, path = entry.partition("=")
        if not separator or not path:
            print(f"--checkpoint expects NAME=PATH, got {entry!r}", file=sys.stderr)
            return 2
        checkpoints[name] = path
    device = resolve_device(args.device)
    splits = slstm.data.load_dataset_from_args(args, seed=args.seed, device=device)

    skipped = []
    columns = ("first loss", "last loss", "test error", "s/step")
    print(f"{'optimizer':<16} " + " ".join(f"{column:>10}" for column in columns))
    for name in names:
        start = time.perf_counter()
        try:
            losses, error = train(name, splits, args, checkpoints, device)
        except slstm.optim.CheckpointError as error:
            print(f"{name:<16} skipped: {error}", file=sys.stderr)
            skipped.append(name)
            continue
        seconds = (time.perf_counter() - start) / max(len(losses), 1)
        print(
            f"{name:<16} {losses[0]:>10.4f} {losses[-1]:>10.4f} {error:>10.2%} "
            f"{seconds:>10.3f}"
        )
    if skipped:
        print(
            f"skipped for lack of a checkpoint: {', '.join(skipped)}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
