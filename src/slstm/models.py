"""The convolutional networks of the experiments.

Every network is a flat ``nn.Sequential`` of the modules the curvature engine
supports (``Conv2d``, ``ReLU``, ``MaxPool2d``, ``AvgPool2d``, ``Flatten``,
``Linear``, ``Dropout``), so one backward pass can return the gradient and the
diagonal Hessian of every parameter. Input shape and class count come from the
data set. The widths are keyword arguments whose defaults are the published
sizes: 64 maps and 32 hidden units for MNIST and CIFAR-10, 64-256-512-512-512
maps and 4096 hidden units for ImageNet. Pass narrower ones (``channels=16``)
for CPU runs.

Choices the published description leaves open, made here:

- every convolution keeps the spatial size (stride 1, zero padding ``k // 2``)
  except the first of ``imagenet_cnn``, which has stride 2;
- a 2×2 max-pool follows each convolution of ``mnist_cnn``/``cifar_cnn`` and
  ``small_cnn``;
- "2 fully connected layers of 32 units" are two hidden layers, each followed
  by ReLU, and a linear classifier comes after them. The network outputs
  logits (no softmax);
- PyTorch's default initialisation.
"""

from __future__ import annotations

import argparse
import inspect
import numbers
from collections.abc import Callable, Sequence

from torch import nn

__all__ = [
    "MODELS",
    "add_model_arguments",
    "build_model",
    "cifar_cnn",
    "count_parameters",
    "imagenet_cnn",
    "mnist_cnn",
    "model_from_args",
    "model_sizes",
    "small_cnn",
]


def _widths(value, count: int, what: str) -> list[int]:
    """Expand an int or a sequence of ``count`` ints into a list of positive ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = [int(value)] * count
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != count:
            raise ValueError(
                f"{what}={list(value)} has {len(values)} entries; give one int "
                f"or {count} ints, one per layer"
            )
    else:
        raise ValueError(f"{what} must be an int or {count} ints, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(
                f"{what}={value!r} must contain positive ints, found {v!r}"
            )
    return [int(v) for v in values]


def _check_kernel(kernel_size) -> int:
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, numbers.Integral)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(
            f"kernel_size must be a positive odd int (so padding k // 2 keeps the "
            f"image size), got {kernel_size!r}"
        )
    return int(kernel_size)


def _check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout}")
    return float(dropout)


def _check_input(input_shape, num_classes) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
        for s in shape
    ):
        raise ValueError(
            f"input_shape must be three positive ints (C, H, W), got {input_shape!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes}")
    return tuple(int(s) for s in shape)


def _pooled(size: int, name: str, input_shape) -> int:
    """Return the side after a 2×2 max-pool, or raise if nothing would be left."""
    if size < 2:
        shape = "x".join(str(s) for s in input_shape)
        raise ValueError(
            f"{name}: input {shape} is too small because the feature maps shrink "
            f"to {size} pixel(s) on a side before a 2x2 max-pool; use larger "
            "images (e.g. --image-size) or another network"
        )
    return size // 2


def _classifier(features: int, hidden: list[int], num_classes: int, dropout: float):
    """Return the fully connected layers: hidden layers with ReLU, then logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(features, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        features = width
    layers.append(nn.Linear(features, num_classes))
    return layers


def _conv_pool_cnn(
    name: str,
    input_shape,
    num_classes: int,
    maps: list[int],
    kernel_size,
    hidden: list[int],
    dropout,
) -> nn.Sequential:
    """Build [Conv2d → ReLU → MaxPool2d(2)] per entry of ``maps``, then the FC part."""
    in_channels, height, width = _check_input(input_shape, num_classes)
    kernel_size = _check_kernel(kernel_size)
    dropout = _check_dropout(dropout)
    layers: list[nn.Module] = []
    for out_channels in maps:
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        height = _pooled(height, name, input_shape)
        width = _pooled(width, name, input_shape)
        in_channels = out_channels
    features = in_channels * height * width
    layers += _classifier(features, hidden, num_classes, dropout)
    return nn.Sequential(*layers)


def mnist_cnn(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    *,
    channels: int | Sequence[int] = 64,
    kernel_size: int = 5,
    hidden: int | Sequence[int] = 32,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Build three 5×5 conv layers and two hidden fully connected layers.

    Layout: 3 × [Conv2d(k×k, padding k // 2) → ReLU → MaxPool2d(2)] → Flatten →
    2 × [Linear → ReLU (→ Dropout)] → Linear(num_classes). A 28×28 input shrinks
    to 14, 7 and 3 pixels (floor), a 32×32 input to 16, 8 and 4.

    Args:
        input_shape: ``(C, H, W)``; H and W must be at least 8.
        num_classes: logits per example.
        channels: feature maps of every conv layer, or one value per layer.
        kernel_size: odd side of the square filters.
        hidden: units of both hidden fully connected layers, or two values.
        dropout: probability after each hidden layer; 0 adds no Dropout module.

    Returns:
        ``nn.Sequential`` mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
        With the defaults on Fashion-MNIST it has 226,442 parameters.
    """
    maps = _widths(channels, 3, "channels")
    widths = _widths(hidden, 2, "hidden")
    return _conv_pool_cnn(
        "mnist_cnn", input_shape, num_classes, maps, kernel_size, widths, dropout
    )


def cifar_cnn(
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    channels: int | Sequence[int] = 64,
    kernel_size: int = 5,
    hidden: int | Sequence[int] = 32,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Build the network of :func:`mnist_cnn`, with CIFAR-10's input shape as default.

    The published setup uses one architecture for MNIST and CIFAR-10. With the
    defaults on CIFAR-10 it has 243,978 parameters.
    """
    maps = _widths(channels, 3, "channels")
    widths = _widths(hidden, 2, "hidden")
    return _conv_pool_cnn(
        "cifar_cnn", input_shape, num_classes, maps, kernel_size, widths, dropout
    )


def small_cnn(
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    channels: int = 16,
    kernel_size: int = 5,
    hidden: int = 32,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Build one conv layer and one hidden fully connected layer.

    This is the network on which a learned optimizer is meta-trained before it trains a
    :func:`cifar_cnn`. It has both kinds of parameters (conv and fully
    connected), so both of the optimizer's LSTMs are trained. The published
    description gives no widths; the defaults here are this library's choice.

    Layout: Conv2d(k×k, padding k // 2) → ReLU → MaxPool2d(2) → Flatten →
    Linear(hidden) → ReLU (→ Dropout) → Linear(num_classes). ``hidden=0`` drops
    the hidden layer, leaving the classifier as the only fully connected layer.
    With the defaults on CIFAR-10 it has 132,650 parameters.
    """
    maps = _widths(channels, 1, "channels")
    if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral):
        raise ValueError(f"hidden must be an int >= 0, got {hidden!r}")
    if hidden < 0:
        raise ValueError(f"hidden must be an int >= 0, got {hidden}")
    widths = [int(hidden)] if hidden > 0 else []
    return _conv_pool_cnn(
        "small_cnn", input_shape, num_classes, maps, kernel_size, widths, dropout
    )


def imagenet_cnn(
    input_shape: Sequence[int] = (3, 64, 64),
    num_classes: int = 1000,
    *,
    channels: int | Sequence[int] = (64, 256, 512, 512, 512),
    hidden: int | Sequence[int] = 4096,
    dropout: float = 0.0,
    pooled_size: int = 4,
) -> nn.Sequential:
    """Build five conv layers (64, 256, 512, 512, 512 maps) and two hidden FC layers.

    Layout, with sizes for a 64×64 input:

    - Conv2d(7×7, stride 2, padding 3) → ReLU → MaxPool2d(2): 64 → 32 → 16
    - Conv2d(5×5, padding 2) → ReLU → MaxPool2d(2): 16 → 8
    - 3 × [Conv2d(3×3, padding 1) → ReLU], then MaxPool2d(2): 8 → 4
    - AvgPool2d(s // pooled_size) when the maps are at least twice
      ``pooled_size`` (e.g. 224×224 input: 14 → 4). For images of 64×64 or
      more this leaves maps of ``pooled_size`` to ``2 * pooled_size - 1`` pixels
    - Flatten → 2 × [Linear(hidden) → ReLU (→ Dropout)] → Linear(num_classes)

    The filter sizes and strides follow the common AlexNet-style layout; the
    published description gives only the widths. With the defaults on 64×64
    images and 1000 classes it has 60,755,944 parameters; pass narrower widths,
    e.g. ``channels=(16, 32, 64, 64, 64), hidden=256``, for CPU runs.

    Args:
        input_shape: ``(C, H, W)``; H and W must be at least 16.
        num_classes: logits per example.
        channels: five widths, or one for every layer.
        hidden: units of both hidden layers, or two values.
        dropout: probability after each hidden layer; 0 adds no Dropout module.
        pooled_size: the side the average pooling aims for.
    """
    in_channels, height, width = _check_input(input_shape, num_classes)
    maps = _widths(channels, 5, "channels")
    widths = _widths(hidden, 2, "hidden")
    dropout = _check_dropout(dropout)
    (pooled_size,) = _widths(pooled_size, 1, "pooled_size")
    name = "imagenet_cnn"

    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, maps[0], 7, stride=2, padding=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]
    height, width = (height + 1) // 2, (width + 1) // 2
    height, width = (
        _pooled(height, name, input_shape),
        _pooled(width, name, input_shape),
    )
    layers += [nn.Conv2d(maps[0], maps[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
    height, width = (
        _pooled(height, name, input_shape),
        _pooled(width, name, input_shape),
    )
    for c_in, c_out in zip(maps[1:4], maps[2:5], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    layers.append(nn.MaxPool2d(2))
    height, width = (
        _pooled(height, name, input_shape),
        _pooled(width, name, input_shape),
    )

    window = min(height, width) // pooled_size
    if window > 1:
        layers.append(nn.AvgPool2d(window))
        height, width = height // window, width // window
    features = maps[4] * height * width
    layers += _classifier(features, widths, num_classes, dropout)
    return nn.Sequential(*layers)


ModelFactory = Callable[..., nn.Sequential]

MODELS: dict[str, ModelFactory] = {
    "mnist_cnn": mnist_cnn,
    "cifar_cnn": cifar_cnn,
    "imagenet_cnn": imagenet_cnn,
    "small_cnn": small_cnn,
}


def model_sizes(name: str) -> dict[str, object]:
    """Return the size keywords of model ``name`` with their defaults."""
    factory = _factory(name)
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _factory(name: str) -> ModelFactory:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown network {name!r}; choose one of {', '.join(MODELS)}"
        ) from None


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **sizes
) -> nn.Sequential:
    """Build network ``name`` for images of ``input_shape`` and ``num_classes``.

    ``sizes`` override the network's width keywords (see :func:`model_sizes`);
    an unknown keyword or an invalid value raises ValueError naming it.
    """
    factory = _factory(name)
    accepted = model_sizes(name)
    unknown = sorted(set(sizes) - set(accepted))
    if unknown:
        raise ValueError(
            f"{name} has no size {', '.join(map(repr, unknown))}; "
            f"it accepts {', '.join(accepted)}"
        )
    return factory(input_shape, num_classes, **sizes)


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Return the number of scalar parameters (only trainable ones by default)."""
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable_only
    )


def parse_size(text: str) -> tuple[str, object]:
    """Parse ``--net-size KEY=VALUE``: an int, ints separated by commas, or a float.

    ``"channels=16"`` gives ``("channels", 16)``, ``"hidden=64,32"`` gives
    ``("hidden", (64, 32))`` and ``"dropout=0.5"`` gives ``("dropout", 0.5)``.
    """
    key, equals, value = text.partition("=")
    key, value = key.strip().replace("-", "_"), value.strip()
    if not equals or not key or not value:
        raise argparse.ArgumentTypeError(
            f"invalid network size {text!r}; write KEY=VALUE, e.g. channels=16"
        )
    try:
        if "," in value:
            return key, tuple(int(v) for v in value.split(","))
        if value.lstrip("-").isdigit():
            return key, int(value)
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value in {text!r}; write an int (16), ints (64,32) or a "
            "float (0.5)"
        ) from None


def add_model_arguments(parser: argparse.ArgumentParser, *, default="mnist_cnn"):
    """Add ``--net NAME`` and repeatable ``--net-size KEY=VALUE`` to ``parser``."""
    group = parser.add_argument_group("network")
    group.add_argument(
        "--net",
        default=default,
        choices=list(MODELS),
        metavar="NAME",
        help=f"network: {', '.join(MODELS)} (default: {default})",
    )
    group.add_argument(
        "--net-size",
        type=parse_size,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a width of the network, e.g. channels=16 or hidden=64,32; "
        "repeat for several",
    )
    return group


def model_from_args(
    args: argparse.Namespace, input_shape, num_classes
) -> nn.Sequential:
    """Call :func:`build_model` with the options of :func:`add_model_arguments`."""
    return build_model(args.net, input_shape, num_classes, **dict(args.net_size))
