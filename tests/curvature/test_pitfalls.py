"""Cases that diagonal-Hessian implementations commonly get wrong."""

import torch
import torch.nn.functional as F
from torch import nn

from slstm.curvature import backward
from slstm.curvature.rules import RULES, BackwardContext


def rule_backward(module, x, g_out, h_out):
    rule = RULES[type(module)](module, "m")
    rule.check()
    rule.pre_forward(x)
    rule.post_forward(x, module(x))
    ctx = BackwardContext(need_input=True, second_order=True, params=frozenset())
    return rule.backward(g_out.clone(), h_out.clone(), ctx)


def test_overlapping_max_pool_sums_both_windows():
    # The centre entry is the maximum of both 2x2 windows of stride 1 along the row.
    x = torch.tensor([[[[0.0, 5.0, 1.0], [2.0, 3.0, 0.5]]]])
    pool = nn.MaxPool2d(2, stride=1)
    h_out = torch.tensor([[[[2.0, 3.0]]]])

    g_in, h_in, _ = rule_backward(pool, x, h_out, h_out)

    assert h_in[0, 0, 0, 1] == 5.0
    assert g_in[0, 0, 0, 1] == 5.0
    # max_unpool2d writes one window over the other instead of adding them.
    _, indices = F.max_pool2d(x, 2, stride=1, return_indices=True)
    unpooled = F.max_unpool2d(h_out, indices, 2, stride=1, output_size=x.shape[-2:])
    assert unpooled[0, 0, 0, 1] != 5.0


def test_max_pool_ties_go_to_one_index():
    x = torch.ones(1, 1, 4, 4)
    x[0, 0, 2:, 2:] = 0.5
    pool = nn.MaxPool2d(2)
    h_out = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])

    g_in, h_in, _ = rule_backward(pool, x, h_out, h_out)

    x_leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(pool(x_leaf), x_leaf, h_out)
    torch.testing.assert_close(g_in, expected)
    torch.testing.assert_close(h_in, expected)
    windows = h_in.view(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4)
    assert ((windows != 0).sum(1) == 1).all()


def test_padding_copies_send_h_back_to_the_source():
    # With reflect padding the border entries are read twice; their H must
    # collect both reads, which a zero-padded transposed convolution misses.
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect", bias=False)
    nn.init.ones_(conv.weight)
    x = torch.randn(1, 1, 4, 4)
    h_out = torch.ones(1, 1, 4, 4)

    _, h_in, _ = rule_backward(conv, x, torch.zeros_like(h_out), h_out)

    zero_padded = torch.nn.grad.conv2d_input(
        x.shape, conv.weight.square(), h_out, padding=1
    )
    # Entry (0, 1) is read by 6 windows as itself and by 2 more as the
    # reflection at column -1.
    assert h_in[0, 0, 0, 1] == 8.0
    assert zero_padded[0, 0, 0, 1] == 6.0


def test_avg_pool_divisor_differs_per_window():
    pool = nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
    x = torch.randn(1, 1, 3, 3)
    h_out = torch.ones(1, 1, 2, 2)

    _, h_in, _ = rule_backward(pool, x, torch.zeros_like(h_out), h_out)

    # Full window: 4 entries, 1/16 each; clipped corner window: 1 entry, weight 1.
    assert h_in[0, 0, 0, 0] == 1 / 16
    assert h_in[0, 0, 2, 2] == 1.0
    assert h_in[0, 0, 0, 2] == 1 / 4


def test_batch_of_one_sample_exact_last_layer(reference_diagonals):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, groups=1, dilation=2, bias=False),
        nn.ReLU(),
        nn.Conv2d(2, 2, 1, groups=2),
        nn.Flatten(),
        nn.Linear(18, 3),
    )
    inputs, targets = torch.randn(1, 1, 7, 7), torch.tensor([2])

    backward(model, nn.CrossEntropyLoss(), inputs, targets)

    expected = reference_diagonals(model, nn.CrossEntropyLoss(), inputs, targets)
    torch.testing.assert_close(model[4].weight.hessian_diag, expected["4.weight"])
    torch.testing.assert_close(model[4].bias.hessian_diag, expected["4.bias"])
