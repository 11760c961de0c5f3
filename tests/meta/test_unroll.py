"""The meta-gradient of one truncation: its paths, its value, its memory."""

import gc

import pytest
import torch
from torch.func import functional_call

from slstm.meta.trainer import MetaTrainer
from slstm.meta.unroll import cross_entropy, unroll_truncation
from slstm.optim import build_features


def _randomise_readouts(trainer, seed=0):
    # The read-out starts at zero, which zeroes every other weight's meta-gradient;
    # a random read-out lets the tests see all of them.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in trainer.nets.values():
            net.readout.weight.copy_(
                0.3 * torch.randn(net.readout.weight.shape, generator=generator)
            )


def _meta_gradient(trainer, steps, meta_gradient="surrogate", meta_loss="sum"):
    optimizee = trainer.start_episode(0)
    result = unroll_truncation(
        optimizee,
        trainer.nets,
        trainer.optimizer_config,
        steps,
        [1.0] * steps,
        meta_loss=meta_loss,
        meta_gradient=meta_gradient,
    )
    return torch.autograd.grad(result.meta_loss, trainer.meta_params), result


def _reference_meta_gradient(trainer, steps, detach_inputs):
    """Unroll with plain autograd through the CNN, for the gradient-only optimizer.

    With ``detach_inputs`` False the gradient fed to the update network keeps
    its graph, so the meta-gradient also flows through ``g``.
    """
    # Same task, so the same initial point and minibatches as _meta_gradient.
    # The initial point does not depend on the update networks, so g_0 needs
    # no graph.
    optimizee = trainer.start_episode(0)
    model, names, kinds = optimizee.model, optimizee.names, optimizee.kinds
    params = list(optimizee.params)
    grads = list(optimizee.current.grads)
    state = [None] * len(params)
    total = 0.0
    for _ in range(steps):
        new_params, new_state = [], []
        for p, g, kind, entry in zip(params, grads, kinds, state, strict=True):
            feed = g.detach() if detach_inputs else g
            features = build_features(feed, None, trainer.optimizer_config)
            update, entry = trainer.nets[kind](features, entry)
            new_params.append(p + update.view_as(p))
            new_state.append(entry)
        params, state = new_params, new_state
        inputs, targets = next(optimizee.batches)
        named = dict(zip(names, params, strict=True))
        loss = cross_entropy(functional_call(model, named, (inputs,)), targets)
        total = total + loss
        grads = torch.autograd.grad(loss, params, create_graph=True)
    return torch.autograd.grad(total, trainer.meta_params)


def _max_relative_difference(first, second):
    worst = 0.0
    for a, b in zip(first, second, strict=True):
        scale = max(float(a.abs().max()), float(b.abs().max()), 1e-12)
        worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def test_meta_gradient_matches_detached_reference(tiny_config):
    trainer = MetaTrainer(tiny_config(optimizer="lstm"), progress=False)
    _randomise_readouts(trainer)
    ours, _ = _meta_gradient(trainer, steps=3)
    detached = _reference_meta_gradient(trainer, steps=3, detach_inputs=True)
    through_g = _reference_meta_gradient(trainer, steps=3, detach_inputs=False)
    assert _max_relative_difference(ours, detached) < 1e-4
    # The reference that differentiates through g differs, so the comparison
    # above would catch a meta-gradient that flowed through the inputs.
    assert _max_relative_difference(ours, through_g) > 1e-3


@pytest.mark.parametrize("optimizer", ["lstm", "slstm"])
@pytest.mark.parametrize("meta_loss", ["sum", "log"])
def test_surrogate_equals_backprop(tiny_config, optimizer, meta_loss):
    trainer = MetaTrainer(tiny_config(optimizer=optimizer), progress=False)
    _randomise_readouts(trainer)
    surrogate, first = _meta_gradient(trainer, 4, "surrogate", meta_loss)
    backprop, second = _meta_gradient(trainer, 4, "backprop", meta_loss)
    assert first.losses == pytest.approx(second.losses, rel=1e-6)
    assert first.meta_loss_value == pytest.approx(second.meta_loss_value, rel=1e-6)
    assert _max_relative_difference(surrogate, backprop) < 1e-4


def test_recomputed_updates_give_same_meta_gradient(tiny_config):
    trainer = MetaTrainer(tiny_config(optimizer="slstm"), progress=False)
    _randomise_readouts(trainer)
    stored, first = _meta_gradient(trainer, 4)
    optimizee = trainer.start_episode(0)
    second = unroll_truncation(
        optimizee,
        trainer.nets,
        trainer.optimizer_config,
        4,
        [1.0] * 4,
        recompute_updates=True,
    )
    recomputed = torch.autograd.grad(second.meta_loss, trainer.meta_params)
    assert first.losses == second.losses
    assert _max_relative_difference(stored, recomputed) < 1e-6


@pytest.mark.parametrize("optimizer", ["lstm", "slstm"])
def test_meta_gradient_reaches_every_weight(tiny_config, optimizer):
    trainer = MetaTrainer(tiny_config(optimizer=optimizer), progress=False)
    _randomise_readouts(trainer)
    grads, _ = _meta_gradient(trainer, steps=3)
    names = [name for name, _ in trainer.nets.named_parameters()]
    for name, grad in zip(names, grads, strict=True):
        assert torch.isfinite(grad).all(), name
        assert grad.abs().max() > 0, f"{name} gets no meta-gradient"


@pytest.mark.parametrize("optimizer", ["lstm", "slstm"])
def test_update_inputs_are_detached(tiny_config, optimizer):
    trainer = MetaTrainer(tiny_config(optimizer=optimizer), progress=False)
    optimizee = trainer.start_episode(0)
    # Meta-training evaluates parameters that carry a graph; clones stand in.
    params = [p.clone().requires_grad_() for p in optimizee.params]
    for keep_graph in (False, True):
        evaluation = optimizee.evaluate(params, keep_graph=keep_graph)
        inputs = list(evaluation.grads) + list(evaluation.hessian_diags or [])
        assert all(t.grad_fn is None and not t.requires_grad for t in inputs)


def test_graph_does_not_grow_across_truncations(tiny_config):
    config = tiny_config(optimizer="slstm", horizon=30, unroll=5)
    trainer = MetaTrainer(config, progress=False)
    _randomise_readouts(trainer)
    optimizee = trainer.start_episode(0)
    live_tensors = []
    for _ in range(6):
        grads, usable, result = trainer.truncation_gradients(optimizee, 5)
        assert usable
        trainer.apply_meta_gradients(grads, usable)
        optimizee.detach_()
        del grads, result
        assert all(p.grad_fn is None and not p.requires_grad for p in optimizee.params)
        for hidden, cell in optimizee.state:
            assert hidden.grad_fn is None
            assert cell.grad_fn is None
        gc.collect()
        live_tensors.append(
            sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))
        )
    # The first truncation creates Adam's moments; from then on nothing accrues.
    assert live_tensors[1:] == [live_tensors[1]] * 5


def test_divergence_stops_truncation(tiny_config):
    trainer = MetaTrainer(tiny_config(optimizer="lstm"), progress=False)
    with torch.no_grad():
        for net in trainer.nets.values():
            net.readout.bias.fill_(1e3)  # every coordinate moves by 100 per step
    optimizee = trainer.start_episode(0)
    result = unroll_truncation(
        optimizee, trainer.nets, trainer.optimizer_config, 5, [1.0] * 5
    )
    assert result.diverged
    assert optimizee.diverged
    assert len(result.losses) < 5
