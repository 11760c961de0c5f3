"""Whole networks: the exact cases against autograd, the approximate ones against
an independent reference of the same recursion."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from slstm.curvature import backward

# torch warns that it copies the input for an even 'same' kernel; expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel lengths:UserWarning"
)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky-relu": lambda: nn.LeakyReLU(0.1),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


def engine_diagonals(model, loss_fn, inputs, targets, method="becker-lecun"):
    model.zero_grad()
    backward(model, loss_fn, inputs, targets, method=method)
    return {name: p.hessian_diag for name, p in model.named_parameters()}


# --- Exact cases ---------------------------------------------------------------


@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.CrossEntropyLoss(),
        nn.CrossEntropyLoss(reduction="sum"),
        nn.CrossEntropyLoss(
            weight=torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64),
            label_smoothing=0.2,
        ),
        nn.CrossEntropyLoss(ignore_index=0),
    ],
    ids=["mean", "sum", "weight-smoothing", "ignore-index"],
)
def test_last_linear_exact_under_cross_entropy(loss_fn, reference_diagonals):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    inputs = torch.randn(6, 4)
    targets = torch.randint(0, 3, (6,))

    diagonals = engine_diagonals(model, loss_fn, inputs, targets)

    expected = reference_diagonals(model, loss_fn, inputs, targets)
    for name in ("2.weight", "2.bias"):
        torch.testing.assert_close(
            diagonals[name], expected[name], rtol=1e-10, atol=1e-13
        )
    # The first layer is approximate: it must not match exactly.
    assert not torch.allclose(diagonals["0.weight"], expected["0.weight"], rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_last_two_linear_exact_under_mse(reduction, activation, reference_diagonals):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(3, 4),
        nn.Tanh(),
        nn.Linear(4, 5),
        ACTIVATIONS[activation](),
        nn.Linear(5, 2),
    )
    loss_fn = nn.MSELoss(reduction=reduction)
    inputs = torch.randn(5, 3)
    targets = torch.randn(5, 2)

    diagonals = engine_diagonals(model, loss_fn, inputs, targets)

    expected = reference_diagonals(model, loss_fn, inputs, targets)
    for name in ("2.weight", "2.bias", "4.weight", "4.bias"):
        torch.testing.assert_close(
            diagonals[name], expected[name], rtol=1e-10, atol=1e-13
        )


CONV_TO_MSE = {
    "plain": lambda: nn.Conv2d(2, 3, 3),
    "stride-dilation": lambda: nn.Conv2d(2, 3, 3, stride=2, dilation=2, padding=2),
    "groups-no-bias": lambda: nn.Conv2d(2, 4, 3, groups=2, bias=False),
    "same-even": lambda: nn.Conv2d(2, 3, 4, padding="same"),
    "reflect": lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
    "replicate": lambda: nn.Conv2d(2, 3, 3, padding=2, padding_mode="replicate"),
    "circular": lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"),
}


TAILS = {
    "flatten": lambda conv: [],
    "tanh": lambda conv: [nn.Tanh()],
    # Each max-pool output reads one input, so H stays diagonal through it.
    "overlapping-max-pool": lambda conv: [nn.ReLU(), nn.MaxPool2d(3, stride=1)],
    "batch-norm": lambda conv: [nn.BatchNorm2d(conv.out_channels).eval()],
}


@pytest.mark.parametrize(
    "name, tail",
    [(name, "flatten") for name in sorted(CONV_TO_MSE)]
    + [
        ("stride-dilation", "tanh"),
        ("reflect", "overlapping-max-pool"),
        ("groups-no-bias", "overlapping-max-pool"),
        ("same-even", "batch-norm"),
    ],
)
def test_conv_feeding_mse_exact(name, tail, reference_diagonals):
    torch.manual_seed(2)
    conv = CONV_TO_MSE[name]()
    tail = TAILS[tail](conv)
    for module in tail:
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 2)
            module.running_var.uniform_(0.5, 2)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Sigmoid(), conv, *tail, nn.Flatten())
    inputs = torch.randn(3, 1, 7, 7)
    loss_fn = nn.MSELoss(reduction="sum")
    targets = torch.randn(model(inputs).shape)

    diagonals = engine_diagonals(model, loss_fn, inputs, targets)

    expected = reference_diagonals(model, loss_fn, inputs, targets)
    for param_name in diagonals:
        if not param_name.startswith("0."):  # the first conv is approximate
            torch.testing.assert_close(
                diagonals[param_name], expected[param_name], rtol=1e-10, atol=1e-13
            )


# --- Approximate cases: an independent reference -------------------------------


def reference_recursion(model, loss_fn, inputs, targets, second_order=True):
    """The Becker-LeCun recursion written with explicit per-sample Jacobians.

    For each sample and each leaf module ``y = f(x)``,
    ``H_x = (J ∘ J)ᵀ H_y + diag(∇²_x (g_y · f(x)))``, and each parameter adds
    ``(J_θ ∘ J_θ)ᵀ H_y`` to its diagonal. ``g`` and ``H`` at the output come
    from the loss's own autograd Hessian.
    """
    modules = [m for m in model.modules() if not list(m.children())]
    names = {id(m): n for n, m in model.named_modules()}
    totals = {name: torch.zeros_like(p) for name, p in model.named_parameters()}

    activations = [inputs]
    for module in modules:
        activations.append(module(activations[-1]))
    output = activations[-1].detach()

    def loss_of(flat):
        loss = loss_fn(flat.view(output.shape), targets)
        return loss.sum() if loss.dim() > 0 else loss

    flat = output.flatten().clone().requires_grad_()
    (g_all,) = torch.autograd.grad(loss_of(flat), flat)
    h_all = torch.diagonal(torch.autograd.functional.hessian(loss_of, output.flatten()))
    g_all, h_all = g_all.view(output.shape), h_all.view(output.shape)

    for n in range(inputs.shape[0]):
        g, h = g_all[n : n + 1].flatten(), h_all[n : n + 1].flatten()
        for index in range(len(modules) - 1, -1, -1):
            module = modules[index]
            x = activations[index][n : n + 1].detach()
            params = {k: v.detach() for k, v in module.named_parameters()}

            def f_x(flat_x, module=module, x=x):
                return module(flat_x.view(x.shape)).flatten()

            jacobian = torch.autograd.functional.jacobian(
                f_x, x.flatten(), vectorize=True
            )
            for local, value in params.items():

                def f_p(
                    flat_p, module=module, x=x, local=local, value=value, params=params
                ):
                    replaced = dict(params, **{local: flat_p.view(value.shape)})
                    return functional_call(module, replaced, (x,)).flatten()

                j_p = torch.autograd.functional.jacobian(
                    f_p, value.flatten(), vectorize=True
                )
                totals[f"{names[id(module)]}.{local}"] += (j_p.square().T @ h).view(
                    value.shape
                )
            new_h = jacobian.square().T @ h
            if second_order:
                curvature = torch.autograd.functional.hessian(
                    lambda flat_x, g=g, f_x=f_x: (g * f_x(flat_x)).sum(),
                    x.flatten(),
                    vectorize=True,
                )
                new_h = new_h + torch.diagonal(curvature)
            g, h = jacobian.T @ g, new_h
    return totals


def mlp(activation):
    return nn.Sequential(
        nn.Linear(4, 5), activation(), nn.Linear(5, 4), activation(), nn.Linear(4, 3)
    )


def cnn(activation):
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        activation(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 2, stride=1, dilation=1),
        activation(),
        nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
        nn.Flatten(),
        nn.Linear(3, 4),
        activation(),
        nn.Linear(4, 3),
    )


@pytest.mark.parametrize("method", ["becker-lecun", "gauss-newton"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_matches_reference_recursion(architecture, activation, method):
    torch.manual_seed(3)
    model = (mlp if architecture == "mlp" else cnn)(ACTIVATIONS[activation])
    inputs = torch.randn(3, 4) if architecture == "mlp" else torch.randn(3, 1, 6, 6)
    targets = torch.randint(0, 3, (3,))
    loss_fn = nn.CrossEntropyLoss()

    diagonals = engine_diagonals(model, loss_fn, inputs, targets, method)

    expected = reference_recursion(
        model, loss_fn, inputs, targets, second_order=method == "becker-lecun"
    )
    for name, value in expected.items():
        torch.testing.assert_close(diagonals[name], value, rtol=1e-10, atol=1e-13)
