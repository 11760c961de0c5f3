"""Models, options and inputs the one-pass engine rejects, with the message."""

import pytest
import torch
from torch import nn

from slstm.curvature import UnsupportedModelError, backward, functional_backward


def run(model, inputs=None, method="becker-lecun"):
    inputs = torch.randn(2, 4) if inputs is None else inputs
    targets = torch.zeros(2, dtype=torch.long)
    return backward(model, nn.CrossEntropyLoss(), inputs, targets, method=method)


def assert_no_hooks(model):
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks


def test_unknown_module_named_with_path():
    model = nn.Sequential(
        nn.Linear(4, 4), nn.Sequential(nn.Hardswish()), nn.Linear(4, 2)
    )
    with pytest.raises(UnsupportedModelError) as error:
        run(model)
    message = str(error.value)
    assert "module '1.0' (Hardswish) is not supported" in message
    assert "Conv2d" in message
    assert "MaxPool2d" in message
    assert "method='hutchinson'" in message


def test_module_subclass_is_not_matched():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(
        UnsupportedModelError, match=r"'0' \(MyLinear\) is not supported"
    ):
        run(nn.Sequential(MyLinear(4, 2)))


def test_batch_norm_training_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten())
    inputs = torch.randn(2, 1, 3, 3)
    with pytest.raises(
        UnsupportedModelError, match=r"'1' \(BatchNorm2d\).*training mode"
    ):
        run(model, inputs)
    model.eval()
    run(model, inputs)


def test_batch_norm_without_running_stats():
    model = nn.Sequential(
        nn.BatchNorm2d(1, track_running_stats=False), nn.Flatten()
    ).eval()
    with pytest.raises(UnsupportedModelError, match="track_running_stats=False"):
        run(model, torch.randn(2, 1, 1, 2))


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Linear(4, 2)
        self.right = nn.Linear(4, 2)

    def forward(self, x):
        return self.left(x) + self.right(x)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(x + self.linear(x))


class FunctionalReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.conv(x).view(x.shape[0], -1))


class TwiceCalled(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.linear(self.linear(x)))


class InPlaceBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.linear(x)
        y.mul_(2)
        return self.head(y)


class ChangedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(x) * 2


class DirectParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.head(x)


class PlainChain(nn.Module):
    """A custom container that only runs its modules in sequence: accepted."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 3)
        self.activation = nn.Tanh()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.activation(self.hidden(x)))


@pytest.mark.parametrize(
    "model, inputs, pattern",  # classes and shapes: built in float64
    [
        (Branch, None, r"input of module 'right' \(Linear\) is not the output of"),
        (Residual, None, r"input of module 'head' \(Linear\) is not the output of"),
        (
            FunctionalReshape,
            (2, 1, 3, 3),
            r"input of module 'head' .* functional operation",
        ),
        (TwiceCalled, None, r"module 'linear' \(Linear\) ran twice"),
        (
            InPlaceBetween,
            None,
            r"input of module 'head' \(Linear\) is not the output",
        ),
        (ChangedOutput, None, r"model output is not the output of module 'head'"),
        (DirectParameter, None, r"parameter 'scale' belongs to a container"),
    ],
    ids=[
        "branch",
        "residual",
        "functional-reshape",
        "called-twice",
        "in-place-between",
        "changed-output",
        "direct-parameter",
    ],
)
def test_not_a_chain(model, inputs, pattern):
    model = model()
    inputs = None if inputs is None else torch.randn(inputs)
    with pytest.raises(UnsupportedModelError, match=pattern):
        run(model, inputs)
    assert_no_hooks(model)


def test_custom_container_running_a_chain_is_accepted(reference_gradients):
    model = PlainChain()
    inputs = torch.randn(2, 4)
    targets = torch.zeros(2, dtype=torch.long)

    run(model, inputs)

    expected = reference_gradients(model, nn.CrossEntropyLoss(), inputs, targets)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name])


def test_same_module_registered_twice():
    linear = nn.Linear(4, 4)
    with pytest.raises(UnsupportedModelError, match="same object as module '0'"):
        run(nn.Sequential(linear, nn.Tanh(), linear, nn.Linear(4, 2)))


def test_tied_parameters():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    with pytest.raises(UnsupportedModelError, match="tied"):
        run(nn.Sequential(first, second, nn.Linear(4, 2)))


def test_max_pool_return_indices():
    model = nn.Sequential(nn.MaxPool2d(2, return_indices=True), nn.Flatten())
    with pytest.raises(UnsupportedModelError, match="return_indices=True"):
        run(model, torch.randn(2, 1, 2, 4))


def test_unbatched_conv_input():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(0), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match=r"'0' \(Conv2d\).*batched input"):
        backward(model, nn.CrossEntropyLoss(), torch.randn(1, 2, 2), torch.tensor(0))
    assert_no_hooks(model)


def test_module_with_extra_arguments():
    class TwoArguments(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(x, *())

    class CallsWithKeyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(input=x)

    run(TwoArguments())
    model = CallsWithKeyword()
    with pytest.raises(
        UnsupportedModelError, match="called with 0 positional arguments"
    ):
        run(model)
    assert_no_hooks(model)


def test_invalid_method_and_samples():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="method='newton' is invalid"):
        run(model, method="newton")
    with pytest.raises(ValueError, match="samples=0 must be a positive integer"):
        backward(
            model,
            nn.CrossEntropyLoss(),
            torch.randn(2, 4),
            torch.zeros(2).long(),
            "hutchinson",
            samples=0,
        )


def test_functional_unknown_parameter_names():
    model = nn.Sequential(nn.Linear(4, 2))
    params = {"weight": torch.zeros(2, 4)}
    with pytest.raises(KeyError, match=r"\['weight'\].*'0.weight'"):
        functional_backward(
            model,
            params,
            nn.CrossEntropyLoss(),
            torch.randn(2, 4),
            torch.zeros(2).long(),
        )
