"""``slstm info``: the data sets, where their files are, and the networks' sizes.

Networks are built on PyTorch's ``meta`` device, which records shapes without
allocating memory, so even the 60-million-parameter ``imagenet_cnn`` is counted
at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from slstm.data import DATASETS, add_data_arguments, load_dataset_from_args
from slstm.data.splits import resolve_classes
from slstm.models import MODELS, add_model_arguments, build_model, count_parameters

# Class count assumed for an image folder that was not given with --data-dir.
IMAGENET_CLASSES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument(
        "--load",
        action="store_true",
        help="also read the chosen data set and print its split sizes and "
        "normalisation statistics (checks every file)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the validation split with --load (default: 0)",
    )


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape)


def _location(spec, data_dir) -> str:
    if spec.name == "digits":
        return "bundled with scikit-learn"
    directory = data_dir or spec.default_dir
    if directory is None:
        return "needs --data-dir"
    # Only the folder is looked at here; --load reads and checks every file.
    state = (
        "folder found; --load checks its files"
        if Path(directory).is_dir()
        else "not found"
    )
    return f"{directory} ({state})"


def _data_shape(args) -> tuple[tuple[int, int, int], int, str]:
    """Return ``(input_shape, num_classes, note)`` of the chosen data set."""
    spec = DATASETS[args.data]
    note = ""
    if spec.input_shape is not None:
        input_shape, class_names = spec.input_shape, list(spec.class_names)
    else:
        input_shape = (3, args.image_size, args.image_size)
        class_names = _folder_classes(args.data_dir)
        if class_names is None:
            class_names = [str(i) for i in range(IMAGENET_CLASSES)]
            note = " (assumed; pass --data-dir to count the class folders)"
    num_classes = len(resolve_classes(args.classes, class_names))
    return input_shape, num_classes, note


def _folder_classes(data_dir) -> list[str] | None:
    if data_dir is None or not (Path(data_dir) / "train").is_dir():
        return None
    train = Path(data_dir) / "train"
    names = sorted(p.name for p in train.iterdir() if p.is_dir())
    return names or None


def _count_by_kind(model: nn.Module) -> tuple[int, int]:
    conv = sum(count_parameters(m) for m in model.modules() if isinstance(m, nn.Conv2d))
    fc = sum(count_parameters(m) for m in model.modules() if isinstance(m, nn.Linear))
    return conv, fc


def describe_module(module: nn.Module) -> str:
    """Return a short description of a layer, e.g. ``Conv2d 1->64 5x5 pad 2``."""
    if isinstance(module, nn.Conv2d):
        text = f"Conv2d {module.in_channels}->{module.out_channels} "
        text += "x".join(map(str, module.kernel_size))
        if module.stride != (1, 1):
            text += f" stride {module.stride[0]}"
        if module.padding not in ((0, 0), "valid"):
            text += f" pad {module.padding[0]}"
        return text
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return f"{type(module).__name__} {module.kernel_size}"
    if isinstance(module, nn.Dropout):
        return f"Dropout p={module.p}"
    return type(module).__name__


def _build_on_meta(name, input_shape, num_classes, sizes) -> nn.Sequential:
    with torch.device("meta"):
        return build_model(name, input_shape, num_classes, **sizes)


def print_datasets(args) -> None:
    print("Data sets")
    rows = []
    for spec in DATASETS.values():
        shape = _shape_text(spec.input_shape) if spec.input_shape else "3xSxS"
        classes = str(spec.num_classes) if spec.num_classes else "folders"
        data_dir = args.data_dir if spec.name == args.data else None
        marker = "*" if spec.name == args.data else " "
        rows.append((marker, spec.name, shape, classes, _location(spec, data_dir)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("", "name", "input", "classes", "files")
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print(" " + " ".join(cells) + "  " + row[4])
    print("  (* chosen with --data; S is --image-size)")


def print_networks(args, input_shape, num_classes, note) -> None:
    sizes = dict(args.net_size)
    title = f"Networks for {args.data}: input {_shape_text(input_shape)}, "
    title += f"{num_classes} classes{note}"
    if sizes:
        title += ", sizes " + ", ".join(f"{k}={v}" for k, v in sizes.items())
    print()
    print(title)
    for name in MODELS:
        marker = "*" if name == args.net else " "
        try:
            model = _build_on_meta(name, input_shape, num_classes, sizes)
        except ValueError as error:
            print(f" {marker} {name:<13} not built: {error}")
            continue
        conv, fc = _count_by_kind(model)
        total = count_parameters(model)
        print(
            f" {marker} {name:<13} {total:>12,} parameters ({conv:,} conv, {fc:,} fc)"
        )


def print_layers(args, input_shape, num_classes) -> None:
    """Print each module of ``--net`` with its output shape and parameter count."""
    sizes = dict(args.net_size)
    try:
        model = _build_on_meta(args.net, input_shape, num_classes, sizes)
    except ValueError:
        return  # print_networks has shown the error.
    print()
    print(f"Layers of {args.net} (output shape per example)")
    x = torch.zeros(1, *input_shape, device="meta")
    for index, module in enumerate(model):
        x = module(x)
        params = count_parameters(module)
        count = f"{params:,}" if params else ""
        shape = _shape_text(x.shape[1:])
        print(f"  {index:>2}  {describe_module(module):<26} {shape:>10} {count:>12}")


def print_loaded(args) -> None:
    data = load_dataset_from_args(args, seed=args.seed)
    print()
    print(f"Loaded {data!r}")
    print(f"  classes: {', '.join(data.class_names[:20])}")
    if len(data.class_names) > 20:
        print(f"  ... and {len(data.class_names) - 20} more")
    mean = ", ".join(f"{m:.4f}" for m in data.mean)
    std = ", ".join(f"{s:.4f}" for s in data.std)
    print(f"  per-channel mean ({mean}), std ({std}) of the train split")


def run(args: argparse.Namespace) -> int:
    print_datasets(args)
    try:
        input_shape, num_classes, note = _data_shape(args)
    except ValueError as error:
        print(f"slstm info: {error}", file=sys.stderr)
        return 2
    print_networks(args, input_shape, num_classes, note)
    print_layers(args, input_shape, num_classes)
    if args.load:
        try:
            print_loaded(args)
        except ValueError as error:  # DataError and bad option values alike
            print(f"slstm info: {error}", file=sys.stderr)
            return 1
    return 0
