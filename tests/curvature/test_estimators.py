"""The autograd methods and the properties every method must have."""

import pytest
import torch
from torch import nn

from slstm.curvature import backward, functional_backward


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def batch(size=4):
    return torch.randn(size, 1, 6, 6), torch.randint(0, 3, (size,))


def diagonals_of(model, inputs, targets, method, **kwargs):
    model.zero_grad()
    backward(model, nn.CrossEntropyLoss(), inputs, targets, method=method, **kwargs)
    return {name: p.hessian_diag.clone() for name, p in model.named_parameters()}


def test_exact_matches_brute_force_hessian_vector_products():
    torch.manual_seed(0)
    model = small_cnn()
    inputs, targets = batch()
    params = list(model.parameters())

    diagonals = diagonals_of(model, inputs, targets, "exact")

    loss = nn.CrossEntropyLoss()(model(inputs), targets)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    for (name, param), grad in zip(model.named_parameters(), grads, strict=True):
        expected = torch.empty(param.numel())
        for i in range(param.numel()):
            unit = torch.zeros(param.numel())
            unit[i] = 1
            (row,) = torch.autograd.grad(
                grad, param, unit.view(param.shape), retain_graph=True
            )
            expected[i] = row.flatten()[i]
        torch.testing.assert_close(
            diagonals[name], expected.view(param.shape), rtol=1e-12, atol=1e-14
        )


def test_hutchinson_mean_converges_to_exact():
    torch.manual_seed(1)
    model = small_cnn()
    inputs, targets = batch()
    exact = diagonals_of(model, inputs, targets, "exact")
    generator = torch.Generator().manual_seed(0)

    few = diagonals_of(
        model, inputs, targets, "hutchinson", samples=4, generator=generator
    )
    many = diagonals_of(
        model, inputs, targets, "hutchinson", samples=2000, generator=generator
    )

    def relative_error(estimate):
        difference = torch.cat([(estimate[k] - exact[k]).flatten() for k in exact])
        scale = torch.cat([exact[k].flatten() for k in exact])
        return (difference.norm() / scale.norm()).item()

    assert relative_error(many) < 0.15
    assert relative_error(many) < relative_error(few) / 5


def test_hutchinson_reproducible_from_generator():
    torch.manual_seed(2)
    model = small_cnn()
    inputs, targets = batch()

    first = diagonals_of(
        model, inputs, targets, "hutchinson", generator=torch.Generator().manual_seed(5)
    )
    second = diagonals_of(
        model, inputs, targets, "hutchinson", generator=torch.Generator().manual_seed(5)
    )

    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)


def test_hutchinson_handles_models_the_engine_rejects():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x):
            return x + self.linear(x).tanh()

    torch.manual_seed(3)
    model = Residual()
    inputs, targets = torch.randn(5, 3), torch.randint(0, 3, (5,))

    exact = diagonals_of(model, inputs, targets, "exact")
    estimate = diagonals_of(
        model,
        inputs,
        targets,
        "hutchinson",
        samples=2000,
        generator=torch.Generator().manual_seed(1),
    )

    for name in exact:
        torch.testing.assert_close(estimate[name], exact[name], rtol=0.2, atol=2e-3)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.Sigmoid, nn.GELU, nn.Softplus])
def test_gauss_newton_never_negative(activation):
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        activation(),
        nn.Flatten(),
        nn.Linear(48, 6),
        activation(),
        nn.Linear(6, 3),
    )
    inputs, targets = batch(8)
    becker_lecun = diagonals_of(model, inputs, targets, "becker-lecun")

    gauss_newton = diagonals_of(model, inputs, targets, "gauss-newton")

    for name, value in gauss_newton.items():
        assert (value >= 0).all(), name
    # The activations' curvature term makes some Becker-LeCun entries negative.
    assert any((value < 0).any() for value in becker_lecun.values())


@pytest.mark.parametrize("method", ["becker-lecun", "gauss-newton", "exact"])
def test_batch_mean_equals_mean_of_samples(method):
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.SiLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(18, 3),
    )
    inputs, targets = batch(5)
    whole = diagonals_of(model, inputs, targets, method)
    whole_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    per_sample = [
        diagonals_of(model, inputs[n : n + 1], targets[n : n + 1], method)
        for n in range(5)
    ]
    per_sample_grads = []
    for n in range(5):
        model.zero_grad()
        backward(model, nn.CrossEntropyLoss(), inputs[n : n + 1], targets[n : n + 1])
        per_sample_grads.append(
            {k: p.grad.clone() for k, p in model.named_parameters()}
        )

    for name in whole:
        mean = torch.stack([d[name] for d in per_sample]).mean(0)
        torch.testing.assert_close(whole[name], mean, rtol=1e-10, atol=1e-14)
        mean_grad = torch.stack([d[name] for d in per_sample_grads]).mean(0)
        torch.testing.assert_close(whole_grads[name], mean_grad, rtol=1e-10, atol=1e-14)


def test_exact_rejects_large_models():
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    inputs, targets = torch.randn(2, 100), torch.tensor([1, 2])

    with pytest.raises(
        ValueError, match="11110 trainable parameters.*max_exact_parameters=5000"
    ):
        backward(
            model,
            nn.CrossEntropyLoss(),
            inputs,
            targets,
            "exact",
            max_exact_parameters=5000,
        )


@pytest.mark.parametrize("method", ["hutchinson", "exact"])
def test_autograd_methods_keep_graph_to_params(method):
    torch.manual_seed(6)
    model = small_cnn()
    inputs, targets = batch()
    scale = torch.tensor(1.5, requires_grad=True)
    params = {name: p.detach() * scale for name, p in model.named_parameters()}

    result = functional_backward(
        model, params, nn.CrossEntropyLoss(), inputs, targets, method
    )
    (meta_grad,) = torch.autograd.grad(result.loss, scale)

    expected_grads = torch.autograd.grad(
        nn.CrossEntropyLoss()(
            torch.func.functional_call(model, params, (inputs,)), targets
        ),
        list(params.values()),
    )
    expected_meta = sum(
        (g * p.detach()).sum()
        for g, p in zip(expected_grads, model.parameters(), strict=True)
    )
    torch.testing.assert_close(meta_grad, expected_meta)
    for (name, _), grad in zip(model.named_parameters(), expected_grads, strict=True):
        torch.testing.assert_close(result.grads[name], grad)
        assert not result.hessian_diags[name].requires_grad
        assert not result.grads[name].requires_grad
