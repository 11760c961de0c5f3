"""Tests every registered optimizer must pass, run over OPTIMIZERS."""

import copy

import pytest
import torch
from torch import nn

from slstm.curvature import backward
from slstm.optim import (
    OPTIMIZERS,
    CheckpointError,
    DiagonalNewton,
    LearnedOptimizer,
    NonFiniteInputError,
    make_optimizer,
    shipped_checkpoints,
)

from .conftest import LOSS_FN, digits_cnn, random_quadratic

NAMES = sorted(OPTIMIZERS)
LEARNED = [name for name in NAMES if OPTIMIZERS[name].learned]

# Step sizes for the quadratic with curvatures in [0.1, 10]. SGD converges only
# below 2 / 10. The adaptive methods take larger steps than their defaults, which
# are sized for CNNs.
QUADRATIC_LR = {"sgd": 0.15, "rmsprop": 0.03, "adam": 0.1, "diagonal-newton": 1.0}


def build(name, params, learned_nets, lr=None):
    spec = OPTIMIZERS[name]
    if spec.learned:
        nets, config = learned_nets[name]
        return spec.make(params, nets=nets, config=config)
    return spec.make(params, lr)


def set_unit_inputs(model):
    """Set every parameter's gradient and diagonal Hessian to ones."""
    for p in model.parameters():
        p.grad = torch.ones_like(p)
        p.hessian_diag = torch.ones_like(p)


def cnn_step(model, optimizer, name, inputs, targets, probes=None):
    """One training step; returns the loss before it. ``probes`` draws
    Hutchinson's random vectors (default: torch's global generator)."""
    optimizer.zero_grad()
    if OPTIMIZERS[name].needs_curvature:
        method = OPTIMIZERS[name].curvature_method
        loss = backward(model, LOSS_FN, inputs, targets, method, generator=probes)
    else:
        loss = LOSS_FN(model(inputs), targets)
        loss.backward()
    optimizer.step()
    return loss.item()


def train_cnn(model, optimizer, name, inputs, targets, steps):
    losses = [cnn_step(model, optimizer, name, inputs, targets) for _ in range(steps)]
    with torch.no_grad():
        losses.append(LOSS_FN(model(inputs), targets).item())
    return losses


def test_registry_names_and_flags():
    assert NAMES == [
        "adam",
        "diagonal-newton",
        "lstm",
        "rmsprop",
        "sgd",
        "slstm",
        "slstm-hutchinson",
    ]
    curvature = {name for name in NAMES if OPTIMIZERS[name].needs_curvature}
    assert curvature == {"diagonal-newton", "slstm", "slstm-hutchinson"}
    assert set(LEARNED) == {"lstm", "slstm", "slstm-hutchinson"}
    assert OPTIMIZERS["slstm-hutchinson"].curvature_method == "hutchinson"
    for name in NAMES:
        spec = OPTIMIZERS[name]
        assert spec.name == name
        assert (spec.default_lr is None) == spec.learned
        assert (spec.curvature_method is None) == (not spec.needs_curvature)


def test_baselines_are_torch_optimizers():
    model = digits_cnn()
    adam = make_optimizer("adam", model)
    rmsprop = make_optimizer("rmsprop", model)
    sgd = make_optimizer("sgd", model, lr=0.5)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["betas"] == (0.9, 0.99)
    assert adam.defaults["lr"] == OPTIMIZERS["adam"].default_lr
    assert isinstance(rmsprop, torch.optim.RMSprop)
    assert rmsprop.defaults["alpha"] == 0.9
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["lr"] == 0.5
    assert isinstance(make_optimizer("diagonal-newton", model), DiagonalNewton)


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        make_optimizer("adagrad", digits_cnn())


@pytest.mark.parametrize("name", LEARNED)
def test_learned_rejects_learning_rate(name, learned_nets):
    nets, config = learned_nets[name]
    with pytest.raises(ValueError, match="no learning rate"):
        OPTIMIZERS[name].make(digits_cnn(), 0.1, nets=nets, config=config)


@pytest.mark.parametrize("name", LEARNED)
def test_learned_default_checkpoint(name):
    if f"{name}-fashion-mnist" in shipped_checkpoints():
        assert isinstance(make_optimizer(name, digits_cnn()), LearnedOptimizer)
    else:
        with pytest.raises(CheckpointError, match="shipped checkpoints"):
            make_optimizer(name, digits_cnn())


def test_learned_rejects_nets_of_other_preset(learned_nets):
    nets, config = learned_nets["lstm"]
    with pytest.raises(ValueError, match="reads"):
        OPTIMIZERS["slstm"].make(digits_cnn(), nets=nets, config=config)


def test_hutchinson_rejects_other_estimator_nets(learned_nets):
    nets, config = learned_nets["slstm"]
    with pytest.raises(ValueError, match="--curvature-method hutchinson"):
        OPTIMIZERS["slstm-hutchinson"].make(digits_cnn(), nets=nets, config=config)


def test_learned_rejects_h_of_another_estimator(learned_nets, digits):
    inputs, targets = digits[0][:16], digits[1][:16]
    model = digits_cnn(4)
    optimizer = build("slstm-hutchinson", model, learned_nets)
    before = [p.clone() for p in model.parameters()]
    backward(model, LOSS_FN, inputs, targets)  # Becker-LeCun, the default
    with pytest.raises(ValueError, match="method=optimizer.curvature_method"):
        optimizer.step()
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    optimizer.zero_grad()
    backward(model, LOSS_FN, inputs, targets, optimizer.curvature_method)
    optimizer.step()


@pytest.mark.parametrize("name", LEARNED)
def test_learned_names_curvature_method(name, learned_nets):
    optimizer = build(name, digits_cnn().parameters(), learned_nets)
    assert optimizer.curvature_method == OPTIMIZERS[name].curvature_method


@pytest.mark.parametrize("name", NAMES)
def test_quadratic_loss_decreases(name, learned_nets):
    generator = torch.Generator().manual_seed(123)
    curvatures, start = random_quadratic(generator)
    theta = nn.Parameter(start.clone())
    groups = [{"params": [theta], "kind": "fc"}]
    optimizer = build(name, groups, learned_nets, lr=QUADRATIC_LR.get(name))
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = 0.5 * (curvatures * theta**2).sum()
        loss.backward()
        theta.hessian_diag = curvatures.clone()
        optimizer.step()
        losses.append(loss.item())
    final = 0.5 * (curvatures * theta.detach() ** 2).sum().item()
    assert final < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_cnn_loss_decreases(name, learned_nets, digits):
    inputs, targets = digits[0][:128], digits[1][:128]
    model = digits_cnn(4, seed=7)
    optimizer = build(name, model, learned_nets)
    losses = train_cnn(model, optimizer, name, inputs, targets, steps=30)
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", LEARNED)
@pytest.mark.parametrize(("channels", "hidden"), [(2, 0), (8, 0), (6, 16)])
def test_learned_drives_cnns_of_other_sizes(
    name, channels, hidden, learned_nets, digits
):
    inputs, targets = digits[0][128:256], digits[1][128:256]
    model = digits_cnn(channels, seed=3, hidden=hidden)
    optimizer = build(name, model, learned_nets)
    losses = train_cnn(model, optimizer, name, inputs, targets, steps=20)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name, learned_nets, digits):
    inputs, targets = digits[0][:64], digits[1][:64]
    model = digits_cnn(4, seed=1)
    optimizer = build(name, model, learned_nets)
    train_cnn(model, optimizer, name, inputs, targets, steps=3)
    twin = copy.deepcopy(model)
    twin_optimizer = build(name, twin, learned_nets)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    probes, twin_probes = torch.Generator().manual_seed(0), torch.Generator()
    twin_probes.manual_seed(0)
    for _ in range(3):
        cnn_step(model, optimizer, name, inputs, targets, probes)
        cnn_step(twin, twin_optimizer, name, inputs, targets, twin_probes)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_and_curvature_stay_finite(name, learned_nets):
    model = digits_cnn(4)
    optimizer = build(name, model, learned_nets)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
            p.hessian_diag = torch.zeros_like(p)
        optimizer.step()
    for p in model.parameters():
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_raises(name, bad, learned_nets):
    model = digits_cnn(4)
    optimizer = build(name, model, learned_nets)
    set_unit_inputs(model)
    model[0].bias.grad[1] = bad
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteInputError, match="gradient of parameter"):
        optimizer.step()
    assert torch.equal(before[0], model[0].weight.detach())


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_advice_fits_optimizer(name, learned_nets):
    model = digits_cnn(4)
    optimizer = build(name, model, learned_nets)
    set_unit_inputs(model)
    model[0].bias.grad[1] = float("nan")
    with pytest.raises(NonFiniteInputError) as info:
        optimizer.step()
    message = str(info.value)
    if OPTIMIZERS[name].learned:
        assert "Lower the learning rate" not in message
        assert "slstm calibrate" in message
    else:
        assert "Lower the learning rate" in message


@pytest.mark.parametrize("name", ["diagonal-newton", "slstm"])
def test_non_finite_curvature_raises(name, learned_nets):
    model = digits_cnn(4)
    optimizer = build(name, model, learned_nets)
    set_unit_inputs(model)
    model[0].weight.hessian_diag[0, 0, 1, 1] = float("-inf")
    with pytest.raises(NonFiniteInputError, match="diagonal Hessian"):
        optimizer.step()


@pytest.mark.parametrize("name", NAMES)
def test_step_with_closure(name, learned_nets, digits):
    inputs, targets = digits[0][:64], digits[1][:64]
    model = digits_cnn(4, seed=2)
    twin = copy.deepcopy(model)
    optimizer = build(name, model, learned_nets)
    twin_optimizer = build(name, twin, learned_nets)

    def closure():
        optimizer.zero_grad()
        if OPTIMIZERS[name].needs_curvature:
            method = OPTIMIZERS[name].curvature_method
            probes = torch.Generator().manual_seed(0)
            return backward(model, LOSS_FN, inputs, targets, method, generator=probes)
        loss = LOSS_FN(model(inputs), targets)
        loss.backward()
        return loss

    returned = optimizer.step(closure)
    twin_probes = torch.Generator().manual_seed(0)
    expected = cnn_step(twin, twin_optimizer, name, inputs, targets, twin_probes)
    assert returned.item() == pytest.approx(expected)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("name", ["diagonal-newton", "slstm"])
def test_curvature_optimizer_needs_hessian(name, learned_nets, digits):
    inputs, targets = digits[0][:16], digits[1][:16]
    model = digits_cnn(4)
    optimizer = build(name, model, learned_nets)
    optimizer.zero_grad()
    LOSS_FN(model(inputs), targets).backward()
    with pytest.raises(ValueError, match="slstm.curvature.backward"):
        optimizer.step()
