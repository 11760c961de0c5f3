"""Shared fixtures: the digits data, a small CNN and briefly meta-trained networks."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from slstm.curvature import functional_backward
from slstm.data import load_dataset
from slstm.models import small_cnn
from slstm.optim import (
    LearnedOptimizerConfig,
    create_update_nets,
    learned_update,
    parameter_kinds,
)

LOSS_FN = nn.CrossEntropyLoss()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these tests on one thread: their tensors are small, and on a shared
    2-core machine a second thread made meta-training here over 10 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """The train split of scikit-learn's 8x8 digits as ``(inputs, targets)``."""
    splits = load_dataset("digits")
    return splits.train.inputs, splits.train.targets


def digits_cnn(channels=4, seed=0, hidden=0):
    """Conv(3x3) -> ReLU -> MaxPool -> Linear for 8x8 digits (410 weights at 4 maps)."""
    torch.manual_seed(seed)
    return small_cnn((1, 8, 8), 10, channels=channels, kernel_size=3, hidden=hidden)


def random_quadratic(generator, size=32):
    """Curvatures log-uniform in [0.1, 10] and a start drawn from N(0, 1)."""
    low, high = math.log(0.1), math.log(10.0)
    curvatures = torch.exp(torch.empty(size).uniform_(low, high, generator=generator))
    start = torch.randn(size, generator=generator)
    return curvatures, start


def quadratic_loss(curvatures, params):
    return sum(0.5 * (a * p**2).sum() for a, p in zip(curvatures, params, strict=True))


def _quadratic_meta_loss(nets, config, generator, unroll=20):
    problems = [random_quadratic(generator) for _ in config.kinds]
    curvatures = [a for a, _ in problems]
    params = [start for _, start in problems]
    initial = quadratic_loss(curvatures, params)
    state, total = None, 0.0
    for _ in range(unroll):
        grads = [a * p.detach() for a, p in zip(curvatures, params, strict=True)]
        params, state = learned_update(
            nets, config, params, grads, curvatures, config.kinds, state
        )
        total = total + quadratic_loss(curvatures, params) / initial
    return total / unroll


def _cnn_meta_loss(nets, config, generator, inputs, targets, seed, unroll=8):
    model = digits_cnn(4, seed=seed)
    kinds = parameter_kinds(model)
    names = list(kinds)
    params = {name: p.detach() for name, p in model.named_parameters()}
    batch = torch.randint(len(inputs), (64,), generator=generator)
    x, y = inputs[batch], targets[batch]
    state, total = None, 0.0
    for _ in range(unroll):
        result = functional_backward(
            model, params, LOSS_FN, x, y, config.curvature_method
        )
        total = total + result.loss
        new_params, state = learned_update(
            nets,
            config,
            [params[name] for name in names],
            [result.grads[name] for name in names],
            [result.hessian_diags[name] for name in names],
            [kinds[name] for name in names],
            state,
        )
        params = dict(zip(names, new_params, strict=True))
    total = total + functional_backward(model, params, LOSS_FN, x, y).loss
    return total / (unroll + 1)


def meta_train(preset, inputs, targets, meta_steps=40, seed=0):
    """Meta-train ``preset``'s networks briefly, alternating between random
    quadratics (20-step unrolls) and fresh digits CNNs (8-step unrolls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread
    try:
        return _meta_train(preset, inputs, targets, meta_steps, seed)
    finally:
        torch.set_num_threads(threads)


def _meta_train(preset, inputs, targets, meta_steps, seed):
    config = LearnedOptimizerConfig.preset(preset)
    torch.manual_seed(seed)
    nets = create_update_nets(config)
    meta_optimizer = torch.optim.Adam(nets.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for step in range(meta_steps):
        if step % 2:
            meta_loss = _quadratic_meta_loss(nets, config, generator)
        else:
            meta_loss = _cnn_meta_loss(
                nets, config, generator, inputs, targets, seed=1000 + step
            )
        meta_optimizer.zero_grad()
        meta_loss.backward()
        nn.utils.clip_grad_norm_(nets.parameters(), 1.0)
        meta_optimizer.step()
    nets.requires_grad_(False)
    return nets, config


@pytest.fixture(scope="session")
def learned_nets(digits):
    """``{name: (nets, config)}`` of every learned optimizer, briefly meta-trained.

    The Hutchinson variant reuses SLSTM's networks with its own configuration:
    Hutchinson's ``h`` estimates the same diagonal, and these tests check the
    optimizer's mechanics, not how well it was meta-trained.
    """
    inputs, targets = digits
    nets = {preset: meta_train(preset, inputs, targets) for preset in ("lstm", "slstm")}
    slstm_nets, slstm_config = nets["slstm"]
    nets["slstm-hutchinson"] = (
        slstm_nets,
        dataclasses.replace(slstm_config, curvature_method="hutchinson"),
    )
    return nets
