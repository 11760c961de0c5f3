"""Where the pass starts: g and H at the model output for every loss option."""

import pytest
import torch
from torch import nn

from slstm.curvature import UnsupportedModelError, backward
from slstm.curvature.losses import check_loss, output_derivatives

CROSS_ENTROPY = {
    "mean": dict(),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none"),
    "weight": dict(weight=torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)),
    "weight-sum": dict(
        weight=torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64), reduction="sum"
    ),
    "label-smoothing": dict(label_smoothing=0.2),
    "weight-label-smoothing": dict(
        weight=torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64),
        label_smoothing=0.3,
    ),
    "ignore-index": dict(ignore_index=2),
    "ignore-index-weight-smoothing": dict(
        ignore_index=1,
        weight=torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64),
        label_smoothing=0.1,
    ),
    "ignore-index-negative": dict(ignore_index=-100, label_smoothing=0.1),
}


def cross_entropy_targets(name, shape):
    targets = torch.randint(0, 4, (shape[0],) + shape[2:])
    if name.startswith("ignore-index"):
        ignore = CROSS_ENTROPY[name]["ignore_index"]
        targets[0] = ignore
    return targets


def exact_output_derivatives(loss_fn, output, targets):
    def loss_of(flat):
        loss = loss_fn(flat.view(output.shape), targets)
        return loss.sum() if loss.dim() > 0 else loss

    flat = output.flatten().clone().requires_grad_()
    (g,) = torch.autograd.grad(loss_of(flat), flat)
    hessian = torch.autograd.functional.hessian(
        loss_of, output.flatten(), vectorize=True
    )
    return g.view(output.shape), torch.diagonal(hessian).view(output.shape)


@pytest.mark.parametrize("name", sorted(CROSS_ENTROPY))
@pytest.mark.parametrize("shape", [(5, 4), (1, 4), (3, 4, 2, 3)], ids=str)
def test_cross_entropy_index_targets(name, shape):
    torch.manual_seed(0)
    loss_fn = nn.CrossEntropyLoss(**CROSS_ENTROPY[name])
    logits = torch.randn(shape) * 2
    targets = cross_entropy_targets(name, shape)
    if shape[0] == 1 and name.startswith("ignore-index"):
        targets[..., -1] = 3  # keep one position that counts

    g, h = output_derivatives(loss_fn, logits, targets)

    expected_g, expected_h = exact_output_derivatives(loss_fn, logits, targets)
    torch.testing.assert_close(g, expected_g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(h, expected_h, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "name", ["mean", "sum", "weight", "label-smoothing", "weight-label-smoothing"]
)
def test_cross_entropy_probability_targets(name):
    torch.manual_seed(1)
    loss_fn = nn.CrossEntropyLoss(**CROSS_ENTROPY[name])
    logits = torch.randn(6, 4)
    targets = torch.softmax(torch.randn(6, 4), dim=1)

    g, h = output_derivatives(loss_fn, logits, targets)

    expected_g, expected_h = exact_output_derivatives(loss_fn, logits, targets)
    torch.testing.assert_close(g, expected_g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(h, expected_h, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mean_squared_error(reduction):
    torch.manual_seed(2)
    loss_fn = nn.MSELoss(reduction=reduction)
    output = torch.randn(4, 3, 2)
    targets = torch.randn(4, 3, 2)

    g, h = output_derivatives(loss_fn, output, targets)

    expected_g, expected_h = exact_output_derivatives(loss_fn, output, targets)
    torch.testing.assert_close(g, expected_g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(h, expected_h, rtol=1e-12, atol=1e-14)


def test_cross_entropy_diagonal_is_not_independent_softmax():
    # The diagonal of diag(p) - p pᵀ is p (1 - p); treating the softmax outputs
    # as independent would give a different value.
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    p = torch.softmax(logits, dim=1)

    _, h = output_derivatives(nn.CrossEntropyLoss(), logits, torch.tensor([1]))

    torch.testing.assert_close(h, p * (1 - p))


def test_loss_errors():
    with pytest.raises(UnsupportedModelError, match="NLLLoss is not supported"):
        check_loss(nn.NLLLoss())
    with pytest.raises(ValueError, match="targets of shape .* do not match"):
        output_derivatives(nn.MSELoss(), torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(UnsupportedModelError, match="expected logits of shape"):
        output_derivatives(nn.CrossEntropyLoss(), torch.zeros(3), torch.tensor(1))


def test_unsupported_loss_in_backward_suggests_hutchinson():
    model = nn.Sequential(nn.Linear(3, 2))
    inputs = torch.randn(4, 3)
    with pytest.raises(UnsupportedModelError, match="method='hutchinson'"):
        backward(model, nn.L1Loss(), inputs, torch.randn(4, 2))


LOSS_OPTIONS = [(name, "index") for name in sorted(CROSS_ENTROPY)] + [
    ("label-smoothing", "probabilities"),
    ("weight", "probabilities"),
    ("mse-mean", "mse"),
    ("mse-sum", "mse"),
    ("mse-none", "mse"),
]


@pytest.mark.parametrize("name, kind", LOSS_OPTIONS)
def test_parameter_gradients_for_loss_option(name, kind, reference_gradients):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    inputs = torch.randn(7, 5)
    if kind == "mse":
        loss_fn = nn.MSELoss(reduction=name.removeprefix("mse-"))
        targets = torch.randn(7, 4)
    elif kind == "probabilities":
        loss_fn = nn.CrossEntropyLoss(**CROSS_ENTROPY[name])
        targets = torch.softmax(torch.randn(7, 4), dim=1)
    else:
        loss_fn = nn.CrossEntropyLoss(**CROSS_ENTROPY[name])
        targets = cross_entropy_targets(name, (7, 4))

    loss = backward(model, loss_fn, inputs, targets)

    expected = reference_gradients(model, loss_fn, inputs, targets)
    expected_loss = loss_fn(model(inputs), targets).sum()
    torch.testing.assert_close(loss, expected_loss.detach(), rtol=1e-12, atol=1e-14)
    for param_name, param in model.named_parameters():
        torch.testing.assert_close(
            param.grad, expected[param_name], rtol=1e-10, atol=1e-13, msg=param_name
        )
