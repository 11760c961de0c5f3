"""The public API: what backward() leaves on the parameters, the functional form,
dtypes, devices and batch shapes."""

import weakref

import pytest
import torch
from torch import nn
from torch.func import functional_call

from slstm.curvature import METHODS, backward, functional_backward


def paper_style_cnn(channels=4, hidden=6):
    return nn.Sequential(
        nn.Conv2d(1, channels, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * 4, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 3),
    )


def batch(size=4):
    return torch.randn(size, 1, 8, 8), torch.randint(0, 3, (size,))


def test_grad_accumulates_and_diagonal_is_replaced(reference_gradients):
    torch.manual_seed(0)
    model = paper_style_cnn()
    inputs, targets = batch()
    loss_fn = nn.CrossEntropyLoss()

    backward(model, loss_fn, inputs, targets)
    first = {name: p.hessian_diag for name, p in model.named_parameters()}
    backward(model, loss_fn, inputs, targets)

    expected = reference_gradients(model, loss_fn, inputs, targets)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * expected[name])
        torch.testing.assert_close(p.hessian_diag, first[name])
        assert p.hessian_diag is not first[name]


def test_loss_and_output():
    torch.manual_seed(1)
    model = paper_style_cnn()
    inputs, targets = batch()

    loss, output = backward(
        model, nn.CrossEntropyLoss(), inputs, targets, return_output=True
    )

    expected_output = model(inputs)
    torch.testing.assert_close(output, expected_output.detach())
    torch.testing.assert_close(
        loss, nn.CrossEntropyLoss()(expected_output, targets).detach()
    )
    assert loss.dim() == 0
    assert not loss.requires_grad
    assert not output.requires_grad


def test_reduction_none_returns_summed_loss():
    model = nn.Sequential(nn.Linear(3, 2))
    inputs, targets = torch.randn(4, 3), torch.randn(4, 2)

    loss = backward(model, nn.MSELoss(reduction="none"), inputs, targets)

    torch.testing.assert_close(
        loss, nn.MSELoss(reduction="sum")(model(inputs), targets).detach()
    )


def test_frozen_parameters_are_skipped(reference_gradients):
    torch.manual_seed(2)
    model = paper_style_cnn()
    for p in model[0].parameters():
        p.requires_grad_(False)
    inputs, targets = batch()

    backward(model, nn.CrossEntropyLoss(), inputs, targets)

    assert model[0].weight.grad is None
    assert not hasattr(model[0].weight, "hessian_diag")
    expected = reference_gradients(model, nn.CrossEntropyLoss(), inputs, targets)
    torch.testing.assert_close(model[3].weight.grad, expected["3.weight"])


@pytest.mark.parametrize("method", ["becker-lecun", "gauss-newton"])
def test_functional_keeps_graph_to_params(method):
    torch.manual_seed(3)
    model = paper_style_cnn()
    inputs, targets = batch()
    loss_fn = nn.CrossEntropyLoss()
    step = torch.tensor(0.1, requires_grad=True)

    def non_leaf_params():
        # Parameters as a learned optimizer produces them: functions of `step`.
        return {
            name: p.detach() - step * torch.ones_like(p)
            for name, p in model.named_parameters()
        }

    params = non_leaf_params()
    result = functional_backward(model, params, loss_fn, inputs, targets, method)
    (meta_grad,) = torch.autograd.grad(result.loss, step)

    params = non_leaf_params()
    expected_loss = loss_fn(functional_call(model, params, (inputs,)), targets)
    expected = torch.autograd.grad(expected_loss, [step, *params.values()])
    torch.testing.assert_close(meta_grad, expected[0])
    assert result.output.requires_grad
    for name, grad in zip(params, expected[1:], strict=True):
        torch.testing.assert_close(result.grads[name], grad)
        assert not result.grads[name].requires_grad
        assert not result.hessian_diags[name].requires_grad
    for p in model.parameters():
        assert p.grad is None


def test_functional_matches_backward():
    torch.manual_seed(4)
    model = paper_style_cnn()
    inputs, targets = batch()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}

    result = functional_backward(model, params, nn.CrossEntropyLoss(), inputs, targets)
    backward(model, nn.CrossEntropyLoss(), inputs, targets)

    for name, p in model.named_parameters():
        torch.testing.assert_close(result.grads[name], p.grad, rtol=0, atol=0)
        torch.testing.assert_close(
            result.hessian_diags[name], p.hessian_diag, rtol=0, atol=0
        )


def test_functional_subset_of_params():
    torch.manual_seed(5)
    model = paper_style_cnn()
    inputs, targets = batch()
    params = {"7.weight": model[7].weight.detach() * 2}

    result = functional_backward(model, params, nn.CrossEntropyLoss(), inputs, targets)

    assert set(result.grads) == {"7.weight"}
    assert set(result.hessian_diags) == {"7.weight"}
    replaced = functional_call(model, params, (inputs,))
    torch.testing.assert_close(result.output.detach(), replaced.detach())


def test_dropout_training_mask_is_consistent():
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Linear(6, 8),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.Linear(8, 8),
        nn.Dropout(0.3, inplace=True),
        nn.Linear(8, 3),
    )
    inputs, targets = torch.randn(5, 6), torch.randint(0, 3, (5,))
    params = {
        name: p.detach().clone().requires_grad_()
        for name, p in model.named_parameters()
    }

    result = functional_backward(
        model,
        params,
        nn.CrossEntropyLoss(),
        inputs,
        targets,
        generator=torch.Generator().manual_seed(0),
    )

    # The output was built with the engine's masks, so autograd on it is the truth.
    expected = torch.autograd.grad(result.loss, list(params.values()))
    for name, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(result.grads[name], grad)


def test_dropout_mask_from_generator():
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    inputs, targets = torch.randn(5, 6), torch.randint(0, 3, (5,))

    def output_with(seed):
        _, output = backward(
            model,
            nn.CrossEntropyLoss(),
            inputs,
            targets,
            return_output=True,
            generator=torch.Generator().manual_seed(seed),
        )
        return output

    torch.testing.assert_close(output_with(1), output_with(1), rtol=0, atol=0)
    assert not torch.equal(output_with(1), output_with(2))


@pytest.mark.parametrize("method", METHODS)
def test_changing_batch_shapes(method, reference_gradients):
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    for size, height in [(3, 7), (1, 7), (5, 9), (2, 6)]:
        inputs = torch.randn(size, 1, height, height)
        targets = torch.randint(0, 3, (size,))
        model.zero_grad()
        backward(model, nn.CrossEntropyLoss(), inputs, targets, method)
        expected = reference_gradients(model, nn.CrossEntropyLoss(), inputs, targets)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[name])
            assert torch.isfinite(p.hessian_diag).all()


@pytest.mark.parametrize("method", METHODS)
def test_float32(method):
    torch.manual_seed(8)
    model64 = paper_style_cnn()
    model32 = paper_style_cnn().float()
    model32.load_state_dict(model64.state_dict())
    inputs, targets = batch()

    backward(
        model64,
        nn.CrossEntropyLoss(),
        inputs,
        targets,
        method,
        generator=torch.Generator().manual_seed(0),
    )
    backward(
        model32,
        nn.CrossEntropyLoss(),
        inputs.float(),
        targets,
        method,
        generator=torch.Generator().manual_seed(0),
    )

    for p32, p64 in zip(model32.parameters(), model64.parameters(), strict=True):
        assert p32.hessian_diag.dtype == torch.float32
        torch.testing.assert_close(p32.grad, p64.grad.float(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            p32.hessian_diag, p64.hessian_diag.float(), rtol=1e-3, atol=1e-6
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["becker-lecun", "gauss-newton", "exact"])
def test_cuda_matches_cpu(method):
    torch.manual_seed(9)
    model = paper_style_cnn()
    inputs, targets = batch()
    backward(model, nn.CrossEntropyLoss(), inputs, targets, method)
    cpu = {
        name: (p.grad.clone(), p.hessian_diag.clone())
        for name, p in model.named_parameters()
    }

    model.cuda().zero_grad()
    backward(model, nn.CrossEntropyLoss(), inputs.cuda(), targets.cuda(), method)

    for name, p in model.named_parameters():
        assert p.hessian_diag.device.type == "cuda"
        torch.testing.assert_close(p.grad.cpu(), cpu[name][0])
        torch.testing.assert_close(p.hessian_diag.cpu(), cpu[name][1])


def test_nothing_kept_alive_after_the_call():
    torch.manual_seed(10)
    model = paper_style_cnn()
    inputs, targets = batch()
    backward(model, nn.CrossEntropyLoss(), inputs, targets)

    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert "forward" not in vars(module)  # no stand-in forward left behind
    with torch.no_grad():
        output = model(inputs)
    output_ref, inputs_ref = weakref.ref(output), weakref.ref(inputs)
    del output, inputs
    assert output_ref() is None
    assert inputs_ref() is None
