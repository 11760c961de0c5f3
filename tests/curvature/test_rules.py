"""Each rule alone against autograd.

For a quadratic loss on the module output with a diagonal Hessian,
``L = Σ_j a_j y_j + d_j y_j² / 2``, the Becker-LeCun step is exact: the input
diagonal is ``Σ_j J_ji² d_j + Σ_j g_j d²y_j/dx_i²`` and, for modules linear in
their parameters, the parameter diagonal is ``Σ_j (dy_j/dθ)² d_j``. So every rule
must reproduce autograd's exact diagonals here, to rounding.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from slstm.curvature.rules import RULES, BackwardContext

# torch warns that it copies the input for an even 'same' kernel; expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel lengths:UserWarning"
)


CASES = {
    "linear": (lambda: nn.Linear(4, 3), (2, 4)),
    "linear-3d-input": (lambda: nn.Linear(4, 3), (2, 3, 4)),
    "linear-no-bias": (lambda: nn.Linear(4, 3, bias=False), (2, 4)),
    "conv": (lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 5)),
    "conv-stride-padding": (
        lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1),
        (2, 2, 6, 5),
    ),
    "conv-dilation": (lambda: nn.Conv2d(2, 2, 2, dilation=2, padding=1), (2, 2, 5, 5)),
    "conv-groups": (lambda: nn.Conv2d(4, 2, 3, groups=2, bias=False), (2, 4, 4, 4)),
    "conv-same-even": (lambda: nn.Conv2d(2, 2, (4, 2), padding="same"), (2, 2, 5, 5)),
    "conv-valid": (lambda: nn.Conv2d(1, 2, 3, padding="valid"), (2, 1, 5, 5)),
    "conv-reflect": (
        lambda: nn.Conv2d(2, 2, 3, padding=2, padding_mode="reflect"),
        (2, 2, 5, 5),
    ),
    "conv-replicate": (
        lambda: nn.Conv2d(2, 2, 3, padding=(1, 2), padding_mode="replicate"),
        (2, 2, 4, 5),
    ),
    "conv-circular": (
        lambda: nn.Conv2d(2, 2, 3, stride=2, padding=2, padding_mode="circular"),
        (2, 2, 5, 5),
    ),
    "conv-same-circular": (
        lambda: nn.Conv2d(1, 2, 4, padding="same", padding_mode="circular"),
        (2, 1, 5, 5),
    ),
    "relu": (nn.ReLU, (3, 7)),
    "leaky-relu": (lambda: nn.LeakyReLU(0.3), (3, 7)),
    "leaky-relu-negative-slope": (lambda: nn.LeakyReLU(-0.4), (3, 7)),
    "sigmoid": (nn.Sigmoid, (3, 7)),
    "tanh": (nn.Tanh, (3, 7)),
    "elu": (lambda: nn.ELU(0.6), (3, 7)),
    "elu-negative-alpha": (lambda: nn.ELU(-0.5), (3, 7)),
    "gelu": (nn.GELU, (3, 7)),
    "gelu-tanh": (lambda: nn.GELU(approximate="tanh"), (3, 7)),
    "silu": (nn.SiLU, (3, 7)),
    "softplus": (lambda: nn.Softplus(beta=1.5, threshold=0.8), (3, 7)),
    "max-pool": (lambda: nn.MaxPool2d(2), (2, 2, 4, 4)),
    "max-pool-overlap": (lambda: nn.MaxPool2d(3, stride=1), (2, 2, 5, 5)),
    "max-pool-all-options": (
        lambda: nn.MaxPool2d(
            (3, 2), stride=2, padding=1, dilation=(1, 2), ceil_mode=True
        ),
        (2, 2, 6, 7),
    ),
    "avg-pool": (lambda: nn.AvgPool2d(2), (2, 2, 4, 4)),
    "avg-pool-overlap": (lambda: nn.AvgPool2d(3, stride=1, padding=1), (2, 1, 4, 5)),
    "avg-pool-ceil": (lambda: nn.AvgPool2d(2, stride=2, ceil_mode=True), (2, 1, 5, 5)),
    "avg-pool-exclude-pad": (
        lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        (2, 1, 5, 6),
    ),
    "avg-pool-ceil-exclude-pad": (
        lambda: nn.AvgPool2d(
            3, stride=2, padding=1, ceil_mode=True, count_include_pad=False
        ),
        (2, 1, 6, 6),
    ),
    "avg-pool-divisor": (
        lambda: nn.AvgPool2d(2, stride=1, divisor_override=3),
        (2, 1, 4, 4),
    ),
    "adaptive-avg-pool": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 7)),
    "adaptive-avg-pool-global": (lambda: nn.AdaptiveAvgPool2d(1), (2, 2, 3, 3)),
    "flatten": (nn.Flatten, (2, 2, 3, 3)),
    "unflatten": (lambda: nn.Unflatten(1, (2, 3)), (2, 6)),
    "identity": (nn.Identity, (2, 5)),
    "dropout-eval": (lambda: nn.Dropout(0.4).eval(), (2, 5)),
    "batch-norm": (lambda: nn.BatchNorm2d(3).eval(), (2, 3, 3, 3)),
    "batch-norm-no-affine": (
        lambda: nn.BatchNorm2d(3, affine=False).eval(),
        (2, 3, 2, 2),
    ),
}


def make_module(name):
    factory, shape = CASES[name]
    module = factory()
    if isinstance(module, nn.BatchNorm2d):
        module.running_mean.uniform_(-1, 1)
        module.running_var.uniform_(0.5, 2)
        if module.affine:
            nn.init.uniform_(module.weight, -1.5, 1.5)
            nn.init.uniform_(module.bias, -1, 1)
    return module, shape


def expected_input_diagonal(module, x, loss_of_output):
    """Return the exact input diagonal.

    For a conv whose padding copies entries, return the diagonal at the padded
    input summed over the copies instead. The padding is its own step, so the
    cross terms between an entry and its copies are dropped.
    """
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        padded = F.pad(
            x, module._reversed_padding_repeated_twice, mode=module.padding_mode
        )

        def loss_of_padded(flat):
            y = F.conv2d(
                flat.view(padded.shape),
                module.weight,
                module.bias,
                module.stride,
                0,
                module.dilation,
                module.groups,
            )
            return loss_of_output(y)

        diagonal = torch.diagonal(
            torch.autograd.functional.hessian(
                loss_of_padded, padded.flatten(), vectorize=True
            )
        ).view(padded.shape)
        x_leaf = x.clone().requires_grad_()
        copies = F.pad(
            x_leaf, module._reversed_padding_repeated_twice, mode=module.padding_mode
        )
        (summed,) = torch.autograd.grad(copies, x_leaf, diagonal)
        return summed
    hessian = torch.autograd.functional.hessian(
        lambda flat: loss_of_output(module(flat.view(x.shape))), x.flatten()
    )
    return torch.diagonal(hessian).view(x.shape)


def run_rule(module, x, g_fn, h_fn, second_order=True):
    """Run the rule for ``module`` on ``x`` with (g_out, H_out) from the output."""
    rule = RULES[type(module)](module, "m")
    rule.check()
    rule.pre_forward(x)
    y = module(x)
    replacement = rule.post_forward(x, y)
    assert replacement is None
    names = frozenset(name for name, _ in module.named_parameters())
    ctx = BackwardContext(need_input=True, second_order=second_order, params=names)
    # Rules may overwrite g_out and h_out, so they get their own copies.
    return rule.backward(g_fn(y).clone(), h_fn(y).clone(), ctx)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_exact_for_diagonal_output_hessian(name):
    torch.manual_seed(1)
    module, shape = make_module(name)
    x = torch.randn(shape)
    y_shape = module(x).shape
    a = torch.randn(y_shape)
    d = torch.rand(y_shape) + 0.1

    def loss_of_output(y):
        return (a * y + 0.5 * d * y.square()).sum()

    g_in, h_in, derivatives = run_rule(module, x, lambda y: a + d * y, lambda y: d)

    x_leaf = x.clone().requires_grad_()
    (expected_g,) = torch.autograd.grad(loss_of_output(module(x_leaf)), x_leaf)
    torch.testing.assert_close(g_in, expected_g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        h_in, expected_input_diagonal(module, x, loss_of_output), rtol=1e-10, atol=1e-12
    )

    params = {n: p.detach() for n, p in module.named_parameters()}
    assert set(derivatives) == set(params)
    for param_name, value in params.items():

        def loss_of_param(flat, param_name=param_name, value=value):
            replaced = dict(params, **{param_name: flat.view(value.shape)})
            return loss_of_output(functional_call(module, replaced, (x,)))

        flat = value.flatten()
        expected_g = torch.func.grad(loss_of_param)(flat).view(value.shape)
        hessian = torch.autograd.functional.hessian(loss_of_param, flat, vectorize=True)
        grad, diagonal = derivatives[param_name]
        torch.testing.assert_close(grad, expected_g, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            diagonal, torch.diagonal(hessian).view(value.shape), rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "elu", "gelu", "silu", "softplus"])
def test_rule_gauss_newton_drops_curvature_term(name):
    torch.manual_seed(2)
    module, shape = make_module(name)
    x = torch.randn(shape)
    g = torch.randn(shape)
    h = torch.rand(shape)

    _, h_full, _ = run_rule(module, x, lambda y: g, lambda y: h)
    _, h_gauss_newton, _ = run_rule(module, x, lambda y: g, lambda y: h, False)

    x_leaf = x.clone().requires_grad_()
    (first,) = torch.autograd.grad(module(x_leaf).sum(), x_leaf, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x_leaf)
    torch.testing.assert_close(h_gauss_newton, first.detach().square() * h)
    torch.testing.assert_close(h_full, h_gauss_newton + second * g)


def test_rule_skips_input_terms_when_not_needed():
    module = nn.Conv2d(2, 3, 3)
    x = torch.randn(2, 2, 5, 5)
    rule = RULES[nn.Conv2d](module, "0")
    rule.check()
    rule.post_forward(x, module(x))
    ctx = BackwardContext(
        need_input=False, second_order=True, params=frozenset({"bias"})
    )
    g_out = torch.randn(2, 3, 3, 3)

    g_in, h_in, derivatives = rule.backward(g_out, g_out.abs(), ctx)

    assert g_in is None
    assert h_in is None
    assert set(derivatives) == {"bias"}
