"""Shared references for the curvature tests: plain autograd, no engine code."""

import pytest
import torch
from torch.func import functional_call


def autograd_gradients(model, loss_fn, inputs, targets):
    """Return {name: dL/dθ} for the trainable parameters, from autograd."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    loss = loss_fn(model(inputs), targets)
    if loss.dim() > 0:
        loss = loss.sum()
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {
        name: torch.zeros_like(p) if g is None else g
        for (name, p), g in zip(params.items(), grads, strict=True)
    }


def autograd_diagonals(model, loss_fn, inputs, targets):
    """Return {name: diag(d²L/dθ²)} from the full Hessian of each tensor."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    diagonals = {}
    for name, value in params.items():

        def loss_of(flat, name=name, value=value):
            replaced = dict(params)
            replaced[name] = flat.view(value.shape)
            loss = loss_fn(functional_call(model, replaced, (inputs,)), targets)
            return loss.sum() if loss.dim() > 0 else loss

        hessian = torch.autograd.functional.hessian(
            loss_of, value.flatten(), vectorize=True
        )
        diagonals[name] = torch.diagonal(hessian).view(value.shape)
    return diagonals


@pytest.fixture(autouse=True)
def float64_default():
    """Build models and inputs in float64 so comparisons can be tight."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def reference_gradients():
    return autograd_gradients


@pytest.fixture
def reference_diagonals():
    return autograd_diagonals
