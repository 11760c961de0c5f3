import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slstm.curvature import backward
from slstm.models import build_model
from slstm.optim import DiagonalNewton

GRAD = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
HESSIAN = torch.tensor([2.0, -4.0, 0.0, 0.0, 1e-9])


def one_step(**kwargs):
    theta = nn.Parameter(torch.zeros(5))
    optimizer = DiagonalNewton([theta], **kwargs)
    theta.grad = GRAD.clone()
    theta.hessian_diag = HESSIAN.clone()
    optimizer.step()
    return theta.detach()


def test_abs_damping_step():
    expected = -0.5 * GRAD / (HESSIAN.abs() + 0.1)
    torch.testing.assert_close(one_step(lr=0.5, eps=0.1), expected)


def test_clamp_damping_step():
    expected = -0.5 * GRAD / HESSIAN.clamp_min(0.1)
    torch.testing.assert_close(one_step(lr=0.5, eps=0.1, damping="clamp"), expected)
    # Negative curvature is treated as flat: the step follows -g, scaled by 1/eps.
    assert one_step(lr=0.5, eps=0.1, damping="clamp")[1].item() == pytest.approx(10.0)


def test_full_newton_step_on_quadratic():
    curvatures = torch.tensor([0.5, 2.0, 8.0])
    theta = nn.Parameter(torch.tensor([1.0, -1.0, 3.0]))
    optimizer = DiagonalNewton([theta], lr=1.0, eps=1e-12)
    loss = 0.5 * (curvatures * theta**2).sum()
    loss.backward()
    theta.hessian_diag = curvatures
    optimizer.step()
    torch.testing.assert_close(theta.detach(), torch.zeros(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be"),
        ({"lr": -1.0}, "lr must be"),
        ({"eps": 0.0}, "eps must be"),
        ({"damping": "square"}, "damping must be one of"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiagonalNewton([nn.Parameter(torch.zeros(1))], **kwargs)


def test_missing_hessian_names_curvature_backward():
    theta = nn.Parameter(torch.zeros(2))
    optimizer = DiagonalNewton([theta])
    theta.grad = torch.ones(2)
    with pytest.raises(ValueError, match="slstm.curvature.backward"):
        optimizer.step()


def test_zero_grad_drops_hessian():
    theta = nn.Parameter(torch.zeros(2))
    optimizer = DiagonalNewton([theta])
    theta.grad = torch.ones(2)
    theta.hessian_diag = torch.ones(2)
    optimizer.zero_grad()
    assert theta.grad is None
    assert theta.hessian_diag is None


def test_rejects_hessian_of_other_shape():
    theta = nn.Parameter(torch.zeros(2))
    optimizer = DiagonalNewton([theta])
    theta.grad = torch.ones(2)
    theta.hessian_diag = torch.ones(3)
    with pytest.raises(ValueError, match="hessian_diag has shape"):
        optimizer.step()


def test_parameters_without_gradient_are_skipped():
    first, second = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = DiagonalNewton([first, second], lr=1.0, eps=1.0)
    first.grad = torch.ones(2)
    first.hessian_diag = torch.zeros(2)
    optimizer.step()
    assert first.detach().tolist() == [0.0, 0.0]
    assert second.detach().tolist() == [1.0, 1.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_defaults_decrease_mnist_cnn_loss(digits, seed):
    # The MNIST CNN on the 8x8 digits upsampled to 28x28: with the earlier
    # defaults (lr 1e-3, eps 1e-4) the loss became NaN within 30 steps here.
    inputs, targets = digits
    inputs = F.interpolate(inputs, size=(28, 28), mode="bilinear")
    torch.manual_seed(seed)
    model = build_model("mnist_cnn", (1, 28, 28), 10, channels=16)
    optimizer = DiagonalNewton(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(30):
        batch = torch.randint(0, len(targets), (64,), generator=generator)
        optimizer.zero_grad()
        loss = backward(model, nn.CrossEntropyLoss(), inputs[batch], targets[batch])
        losses.append(loss.item())
        optimizer.step()
    assert all(math.isfinite(loss) for loss in losses), losses
    assert max(losses) < 1.2 * losses[0], losses
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
