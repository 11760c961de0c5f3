"""``slstm demo``: gradients and diagonal Hessians on real image batches.

Two parts, on minibatches of the training split (Fashion-MNIST by default):

1. The MNIST CNN (three 5x5 conv layers with 64 maps, two hidden layers of 32):
   per-layer statistics of ``g`` and of the Becker-LeCun and Gauss-Newton
   diagonals, and the cost of each method relative to a plain
   ``loss.backward()`` step.
2. A narrow copy of the network, small enough for the exact diagonal: how close
   each method comes to it, per layer (relative L2 error, Pearson correlation,
   share of signs matched).
"""

import argparse
import sys
import time

import torch
from torch import Tensor, nn

from slstm.curvature.engine import backward


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slstm.data import add_data_arguments

    add_data_arguments(parser)
    group = parser.add_argument_group("demo")
    group.add_argument("--batch-size", type=int, default=128, help="examples per batch")
    group.add_argument(
        "--channels", type=int, default=64, help="conv maps of the network (part 1)"
    )
    group.add_argument(
        "--hidden", type=int, default=32, help="hidden units of the network (part 1)"
    )
    group.add_argument(
        "--check-channels",
        type=int,
        default=4,
        help="conv maps of the narrow network compared with the exact diagonal",
    )
    group.add_argument(
        "--check-hidden",
        type=int,
        default=8,
        help="hidden units of the narrow network compared with the exact diagonal",
    )
    group.add_argument(
        "--check-batch-size", type=int, default=32, help="examples per batch (part 2)"
    )
    group.add_argument(
        "--samples",
        type=int,
        default=100,
        help="Rademacher probes of the many-sample Hutchinson estimate (part 2)",
    )
    group.add_argument("--skip-check", action="store_true", help="run part 1 only")
    group.add_argument("--device", default="auto", help="auto, cpu or cuda")
    group.add_argument("--seed", type=int, default=0, help="seeds weights and batches")


def run(args: argparse.Namespace) -> int:
    """Run ``slstm demo``. A user error prints one line and returns 2."""
    try:
        return _run(args)
    except (ValueError, OSError) as error:
        # The project's errors are ValueErrors whose message names the value and
        # the fix, so the message alone is clearer than a traceback.
        print(f"slstm demo: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from slstm.data import batch_iterator, load_dataset_from_args
    from slstm.models import build_model
    from slstm.utils import resolve_device

    device = resolve_device(args.device)
    data = load_dataset_from_args(args, seed=args.seed, device=device)
    generator = torch.Generator().manual_seed(args.seed)
    batches = batch_iterator(
        data.train, args.batch_size, generator=generator, device=device
    )
    inputs, targets = next(batches)
    torch.manual_seed(args.seed)
    model = build_model(
        "mnist_cnn",
        data.input_shape,
        data.num_classes,
        channels=args.channels,
        hidden=args.hidden,
    ).to(device=device, dtype=inputs.dtype)
    loss_fn = nn.CrossEntropyLoss()
    count = sum(p.numel() for p in model.parameters())
    print(
        f"{data.name}: batch of {len(targets)} images {tuple(data.input_shape)}, "
        f"mnist_cnn with {count} parameters, on {device}"
    )
    print()
    print("Part 1: the network at initialisation")
    _describe_layers(model, loss_fn, inputs, targets)

    if not args.skip_check:
        print()
        print("Part 2: each method against the exact diagonal (narrow network)")
        small_batches = batch_iterator(
            data.train, args.check_batch_size, generator=generator, device=device
        )
        small_inputs, small_targets = next(small_batches)
        torch.manual_seed(args.seed)
        small = build_model(
            "mnist_cnn",
            data.input_shape,
            data.num_classes,
            channels=args.check_channels,
            hidden=args.check_hidden,
        ).to(device=device, dtype=inputs.dtype)
        _compare_with_exact(small, loss_fn, small_inputs, small_targets, args.samples)
    return 0


def _describe_layers(model, loss_fn, inputs, targets) -> None:
    seconds = {
        "plain": _timed(lambda: loss_fn(model(inputs), targets).backward(), model)
    }
    diagonals = {}
    for method in ("becker-lecun", "gauss-newton", "hutchinson"):
        seconds[method] = _timed(
            lambda method=method: backward(model, loss_fn, inputs, targets, method),
            model,
        )
        diagonals[method] = {n: p.hessian_diag for n, p in model.named_parameters()}
    grads = {name: p.grad for name, p in model.named_parameters()}

    print(
        f"{'parameter':<12} {'shape':<16} {'rms g':>9} {'mean h BL':>10} "
        f"{'h<0 BL':>7} {'mean h GN':>10} {'h<0 GN':>7}"
    )
    for name, grad in grads.items():
        bl, gn = diagonals["becker-lecun"][name], diagonals["gauss-newton"][name]
        print(
            f"{name:<12} {str(tuple(grad.shape)):<16} "
            f"{grad.square().mean().sqrt().item():9.2e} {bl.mean().item():10.2e} "
            f"{_percent(bl < 0):>7} {gn.mean().item():10.2e} {_percent(gn < 0):>7}"
        )
    print()
    print(
        "time of one step (second of two runs; bench/curvature.py measures "
        "carefully), relative to forward + backward:"
    )
    for method, value in seconds.items():
        print(f"  {method:<14} {value * 1e3:8.1f} ms  {value / seconds['plain']:5.2f}x")


def _compare_with_exact(model, loss_fn, inputs, targets, samples) -> None:
    def diagonals(method, **kwargs):
        backward(model, loss_fn, inputs, targets, method, **kwargs)
        return {n: p.hessian_diag for n, p in model.named_parameters()}

    generator = torch.Generator(device=inputs.device).manual_seed(0)
    exact = diagonals("exact")
    estimates = {
        "becker-lecun": diagonals("becker-lecun"),
        "gauss-newton": diagonals("gauss-newton"),
        "hutchinson 1": diagonals("hutchinson", generator=generator),
        f"hutchinson {samples}": diagonals(
            "hutchinson", samples=samples, generator=generator
        ),
    }
    print(
        f"{sum(p.numel() for p in model.parameters())} parameters, batch of "
        f"{len(targets)}; relative L2 error / correlation / signs matched"
    )
    print(f"{'parameter':<12}" + "".join(f"{name:>24}" for name in estimates))
    for name, truth in exact.items():
        cells = []
        for estimate in estimates.values():
            error, correlation, signs = _agreement(estimate[name], truth)
            cells.append(f"{error:7.2f} / {correlation:5.2f} / {signs:>4}")
        print(f"{name:<12}" + "".join(f"{cell:>24}" for cell in cells))
    print(
        "The last layer is exact for becker-lecun under cross-entropy; the others "
        "drop cross-unit and cross-pixel terms."
    )


def _agreement(estimate: Tensor, truth: Tensor) -> tuple[float, float, str]:
    estimate, truth = estimate.flatten().double(), truth.flatten().double()
    error = ((estimate - truth).norm() / truth.norm().clamp(min=1e-30)).item()
    stacked = torch.stack([estimate, truth])
    correlation = torch.corrcoef(stacked)[0, 1].item() if len(truth) > 1 else 1.0
    return error, correlation, _percent(torch.sign(estimate) == torch.sign(truth))


def _timed(step, model) -> float:
    """Run ``step`` twice and return the seconds of the second run."""
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        _synchronize()
        start = time.perf_counter()
        step()
        _synchronize()
    return time.perf_counter() - start


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _percent(mask: Tensor) -> str:
    return f"{100 * mask.double().mean().item():.0f}%"
