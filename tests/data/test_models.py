"""The networks: output shapes, parameter counts and argument checks."""

import pytest
import torch
from torch import nn

from slstm.models import MODELS, build_model, count_parameters, model_sizes

SUPPORTED = (
    nn.Conv2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Linear,
    nn.Dropout,
)

# Input shape and class count of each data set.
DATA_SHAPES = {
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "digits": ((1, 8, 8), 10),
    "imagefolder-64": ((3, 64, 64), 1000),
}


def conv(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def linear(n_in, n_out):
    return n_in * n_out + n_out


def test_mnist_cnn_count_on_fashion_mnist():
    # 28 -> 14 -> 7 -> 3 after three 2x2 max-pools.
    expected = (
        conv(1, 64, 5)
        + 2 * conv(64, 64, 5)
        + linear(64 * 3 * 3, 32)
        + linear(32, 32)
        + linear(32, 10)
    )
    model = build_model("mnist_cnn", (1, 28, 28), 10)
    assert count_parameters(model) == expected == 226_442


def test_cifar_cnn_count_on_cifar10():
    expected = (
        conv(3, 64, 5)
        + 2 * conv(64, 64, 5)
        + linear(64 * 4 * 4, 32)
        + linear(32, 32)
        + linear(32, 10)
    )
    assert count_parameters(build_model("cifar_cnn", (3, 32, 32), 10)) == expected


def test_small_cnn_count_on_cifar10():
    expected = conv(3, 16, 5) + linear(16 * 16 * 16, 32) + linear(32, 10)
    assert count_parameters(build_model("small_cnn", (3, 32, 32), 10)) == expected


def test_small_cnn_without_hidden_layer():
    model = build_model("small_cnn", (1, 28, 28), 5, hidden=0)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    assert count_parameters(model) == conv(1, 16, 5) + linear(16 * 14 * 14, 5)


def test_imagenet_cnn_count_on_64_pixels():
    # 64 -> 32 (stride 2) -> 16 -> 8 -> 4 after the three max-pools.
    expected = (
        conv(3, 64, 7)
        + conv(64, 256, 5)
        + conv(256, 512, 3)
        + 2 * conv(512, 512, 3)
        + linear(512 * 4 * 4, 4096)
        + linear(4096, 4096)
        + linear(4096, 1000)
    )
    # The meta device records shapes without allocating the 60M parameters.
    with torch.device("meta"):
        model = build_model("imagenet_cnn", (3, 64, 64), 1000)
    assert count_parameters(model) == expected


def test_imagenet_cnn_pools_large_images():
    sizes = dict(channels=(4, 8, 8, 8, 8), hidden=16)
    small = build_model("imagenet_cnn", (3, 64, 64), 10, **sizes)
    large = build_model("imagenet_cnn", (3, 224, 224), 10, **sizes)
    assert any(isinstance(m, nn.AvgPool2d) for m in large)
    assert not any(isinstance(m, nn.AvgPool2d) for m in small)
    assert large(torch.zeros(1, 3, 224, 224)).shape == (1, 10)
    assert count_parameters(large) == count_parameters(small)


# imagenet_cnn needs at least 16x16 images, so it skips the 8x8 digits.
MODEL_DATA = [
    (name, data)
    for name in MODELS
    for data in DATA_SHAPES
    if not (name == "imagenet_cnn" and data == "digits")
]


@pytest.mark.parametrize("name, data", MODEL_DATA)
def test_output_shape_per_dataset(name, data):
    input_shape, num_classes = DATA_SHAPES[data]
    sizes = {"channels": 4, "hidden": 8}
    model = build_model(name, input_shape, num_classes, **sizes)
    output = model(torch.randn(2, *input_shape))
    assert output.shape == (2, num_classes)
    assert isinstance(model, nn.Sequential)
    for module in model:
        assert isinstance(module, SUPPORTED), type(module).__name__


def test_imagenet_cnn_rejects_tiny_input():
    with pytest.raises(ValueError, match="imagenet_cnn: input 1x8x8 is too small"):
        build_model("imagenet_cnn", (1, 8, 8), 10)


def test_mnist_cnn_rejects_tiny_input():
    with pytest.raises(ValueError, match="too small"):
        build_model("mnist_cnn", (1, 4, 4), 10)


def test_per_layer_widths():
    model = build_model(
        "mnist_cnn", (1, 28, 28), 10, channels=(8, 16, 32), hidden=(20, 12)
    )
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert [m.out_features for m in linears] == [20, 12, 10]


def test_dropout_only_when_requested():
    plain = build_model("cifar_cnn", (3, 32, 32), 10, channels=4)
    dropped = build_model("cifar_cnn", (3, 32, 32), 10, channels=4, dropout=0.5)
    assert not any(isinstance(m, nn.Dropout) for m in plain)
    assert sum(isinstance(m, nn.Dropout) for m in dropped) == 2


def test_count_parameters_trainable_only():
    model = build_model("small_cnn", (1, 8, 8), 3, channels=2, hidden=4)
    total = count_parameters(model)
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == total - model[0].weight.numel()
    assert count_parameters(model, trainable_only=False) == total


def test_model_sizes_lists_defaults():
    assert model_sizes("mnist_cnn")["channels"] == 64
    assert model_sizes("imagenet_cnn")["channels"] == (64, 256, 512, 512, 512)


@pytest.mark.parametrize(
    "name, kwargs, fragment",
    [
        ("resnet", {}, "unknown network 'resnet'; choose one of mnist_cnn"),
        (
            "mnist_cnn",
            {"width": 3},
            "mnist_cnn has no size 'width'; it accepts channels",
        ),
        ("mnist_cnn", {"channels": 0}, "positive ints"),
        ("mnist_cnn", {"channels": (8, 8)}, "has 2 entries"),
        ("mnist_cnn", {"hidden": "32"}, "must be an int"),
        ("mnist_cnn", {"kernel_size": 4}, "positive odd int"),
        ("cifar_cnn", {"dropout": 1.0}, r"\[0, 1\)"),
        ("small_cnn", {"hidden": -1}, "hidden must be an int >= 0"),
        ("imagenet_cnn", {"pooled_size": 0}, "positive ints"),
    ],
)
def test_invalid_arguments(name, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_model(name, (3, 32, 32), 10, **kwargs)


@pytest.mark.parametrize(
    "input_shape, num_classes, fragment",
    [
        ((28, 28), 10, "input_shape"),
        ((1, 0, 28), 10, "input_shape"),
        ((1, 28, 28), 1, ">= 2"),
    ],
)
def test_invalid_input_or_classes(input_shape, num_classes, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_model("mnist_cnn", input_shape, num_classes)


@pytest.mark.parametrize("name, data", MODEL_DATA)
def test_curvature_engine_accepts_model(name, data):
    from slstm.curvature import backward

    input_shape, num_classes = DATA_SHAPES[data]
    sizes = {"channels": 3, "hidden": 5, "dropout": 0.5}
    model = build_model(name, input_shape, num_classes, **sizes)
    inputs = torch.randn(3, *input_shape)
    targets = torch.arange(3) % num_classes
    loss = backward(model, nn.CrossEntropyLoss(), inputs, targets)
    assert torch.isfinite(loss)
    for parameter in model.parameters():
        assert parameter.grad is not None
        assert parameter.hessian_diag.shape == parameter.shape
        assert torch.isfinite(parameter.hessian_diag).all()
