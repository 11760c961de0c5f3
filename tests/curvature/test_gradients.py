"""The gradient from the one-pass engine equals autograd's, module by module."""

import pytest
import torch
from torch import nn

from slstm.curvature import backward

# torch warns that it copies the input for an even 'same' kernel; expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel lengths:UserWarning"
)


def conv_net(conv, channels=2, size=7):
    """conv -> Tanh -> Flatten -> Linear, sized by a dry run."""
    body = nn.Sequential(conv, nn.Tanh(), nn.Flatten())
    features = body(torch.zeros(1, channels, size, size)).shape[1]
    return nn.Sequential(*body, nn.Linear(features, 3))


def image_net(*layers, channels=2, size=8):
    """layers on (N, channels, size, size) images, then Flatten -> Linear(…, 3)."""
    body = nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), *layers, nn.Flatten()
    )
    features = body(torch.zeros(1, channels, size, size)).shape[1]
    return nn.Sequential(*body, nn.Linear(features, 3))


MODELS = {
    "linear": lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)),
    "linear-no-bias": lambda: nn.Sequential(
        nn.Linear(5, 4, bias=False), nn.Sigmoid(), nn.Linear(4, 3, bias=False)
    ),
    "conv": lambda: conv_net(nn.Conv2d(2, 3, 3)),
    "conv-stride": lambda: conv_net(nn.Conv2d(2, 3, 3, stride=2, padding=1)),
    "conv-dilation": lambda: conv_net(nn.Conv2d(2, 3, 3, dilation=2, padding=2)),
    "conv-groups": lambda: conv_net(nn.Conv2d(2, 4, 3, groups=2)),
    "conv-no-bias": lambda: conv_net(nn.Conv2d(2, 3, 3, bias=False)),
    "conv-same-odd": lambda: conv_net(nn.Conv2d(2, 3, 3, padding="same")),
    "conv-same-even": lambda: conv_net(nn.Conv2d(2, 3, 4, padding="same")),
    "conv-same-dilated": lambda: conv_net(
        nn.Conv2d(2, 3, 2, padding="same", dilation=3)
    ),
    "conv-valid": lambda: conv_net(nn.Conv2d(2, 3, 3, padding="valid")),
    "conv-rect": lambda: conv_net(nn.Conv2d(2, 3, (3, 2), padding=(2, 1))),
    "conv-reflect": lambda: conv_net(
        nn.Conv2d(2, 3, 3, padding=2, padding_mode="reflect")
    ),
    "conv-replicate": lambda: conv_net(
        nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="replicate")
    ),
    "conv-circular": lambda: conv_net(
        nn.Conv2d(2, 3, 3, padding=2, padding_mode="circular")
    ),
    "conv-same-reflect": lambda: conv_net(
        nn.Conv2d(2, 3, 4, padding="same", padding_mode="reflect")
    ),
    "conv-one-channel": lambda: conv_net(nn.Conv2d(1, 3, 3), channels=1),
    "relu": lambda: image_net(nn.ReLU()),
    "relu-inplace": lambda: image_net(nn.ReLU(inplace=True)),
    "leaky-relu": lambda: image_net(nn.LeakyReLU(0.1)),
    "leaky-relu-negative": lambda: image_net(nn.LeakyReLU(-0.5)),
    "leaky-relu-inplace": lambda: image_net(nn.LeakyReLU(0.2, inplace=True)),
    "sigmoid": lambda: image_net(nn.Sigmoid()),
    "tanh": lambda: image_net(nn.Tanh()),
    "elu": lambda: image_net(nn.ELU(alpha=0.7)),
    "elu-inplace": lambda: image_net(nn.ELU(inplace=True)),
    "gelu": lambda: image_net(nn.GELU()),
    "gelu-tanh": lambda: image_net(nn.GELU(approximate="tanh")),
    "silu": lambda: image_net(nn.SiLU()),
    "silu-inplace": lambda: image_net(nn.SiLU(inplace=True)),
    "softplus": lambda: image_net(nn.Softplus(beta=2.0, threshold=1.0)),
    "max-pool": lambda: image_net(nn.MaxPool2d(2)),
    "max-pool-overlap": lambda: image_net(nn.MaxPool2d(3, stride=1)),
    "max-pool-options": lambda: image_net(
        nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True), size=9
    ),
    "avg-pool": lambda: image_net(nn.AvgPool2d(2)),
    "avg-pool-options": lambda: image_net(
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    ),
    "avg-pool-divisor": lambda: image_net(
        nn.AvgPool2d(3, stride=2, padding=1, divisor_override=5)
    ),
    "adaptive-avg-pool": lambda: image_net(nn.AdaptiveAvgPool2d((3, 5))),
    "adaptive-avg-pool-none": lambda: image_net(nn.AdaptiveAvgPool2d((None, 3))),
    "batch-norm": lambda: image_net(nn.BatchNorm2d(2)).eval(),
    "batch-norm-no-affine": lambda: image_net(nn.BatchNorm2d(2, affine=False)).eval(),
    "dropout-eval": lambda: image_net(nn.Dropout(0.5)).eval(),
    "identity": lambda: image_net(nn.Identity()),
    "unflatten": lambda: nn.Sequential(
        nn.Linear(6, 8),
        nn.Unflatten(1, (2, 2, 2)),
        nn.Conv2d(2, 2, 1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ),
    "nested": lambda: nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(50, 3))),
    ),
}


def randomise_batch_norm(model):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            if module.affine:
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.uniform_(module.bias, -0.5, 0.5)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["becker-lecun", "gauss-newton"])
def test_gradient_matches_autograd(name, method, reference_gradients):
    torch.manual_seed(0)
    model = MODELS[name]()
    randomise_batch_norm(model)
    inputs = make_inputs(model)
    targets = torch.randint(0, 3, (inputs.shape[0],))
    loss_fn = nn.CrossEntropyLoss()
    expected = reference_gradients(model, loss_fn, inputs, targets)
    expected_loss = loss_fn(model(inputs), targets)

    loss = backward(model, loss_fn, inputs, targets, method=method)

    torch.testing.assert_close(loss, expected_loss.detach(), rtol=1e-12, atol=1e-14)
    for param_name, param in model.named_parameters():
        torch.testing.assert_close(
            param.grad, expected[param_name], rtol=1e-10, atol=1e-13, msg=param_name
        )
        assert param.hessian_diag.shape == param.shape


def make_inputs(model, batch=4):
    """A batch the model accepts: features for an MLP, the smallest fitting image."""
    first = next(m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))
    if isinstance(first, nn.Linear) and model[0] is first:
        return torch.randn(batch, first.in_features)
    for size in (8, 7, 9):
        inputs = torch.randn(batch, first.in_channels, size, size)
        try:
            model(inputs)
        except RuntimeError:
            continue
        return inputs
    raise AssertionError("no input size fits the model")
