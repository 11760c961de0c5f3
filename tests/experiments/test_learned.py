"""Learned optimizers inside experiments: output multiplier and provenance notes."""

import pytest
import torch
import torch.nn.functional as F

from slstm.experiments.learned import (
    LearnedSource,
    learned_factory,
    meta_horizon,
    network_note,
)
from slstm.models import build_model
from slstm.optim import Checkpoint, LearnedOptimizerConfig, create_update_nets


def random_source(name="lstm", provenance=None):
    config = LearnedOptimizerConfig.preset(name, hidden_size=4)
    torch.manual_seed(0)
    nets = create_update_nets(config)
    with torch.no_grad():
        for parameter in nets.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    checkpoint = Checkpoint(nets=nets, config=config, provenance=provenance or {})
    return LearnedSource(checkpoint, "random")


def first_update(source, multiplier):
    torch.manual_seed(1)
    model = build_model("mnist_cnn", (1, 12, 12), 3, channels=2, hidden=4)
    before = [p.detach().clone() for p in model.parameters()]
    factory = learned_factory("lstm", source, multiplier, torch.device("cpu"))
    optimizer = factory.make(model, factory.lr)
    inputs, targets = torch.randn(5, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1])
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    return [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]


@pytest.mark.parametrize("multiplier", [0.1, 3.0])
def test_multiplier_scales_first_update(multiplier):
    source = random_source()
    base = first_update(source, 1.0)
    scaled = first_update(source, multiplier)
    assert any(delta.abs().max() > 0 for delta in base)
    # The deltas are differences of float32 parameters near 0.1, so they carry
    # absolute rounding errors of a few 1e-8.
    for got, want in zip(scaled, base, strict=True):
        torch.testing.assert_close(got, multiplier * want, rtol=1e-3, atol=1e-7)


def test_multiplier_leaves_loaded_nets_alone():
    source = random_source()
    first_update(source, 10.0)
    for net in source.checkpoint.nets.values():
        assert net.output_scale == pytest.approx(0.1)


def test_meta_horizon_from_provenance():
    learned = {
        "lstm": random_source("lstm", {"meta_train_config": {"horizon": 50}}),
        "slstm": random_source("slstm", {"meta_train_config": {"horizon": 80}}),
    }
    steps, source = meta_horizon(learned)
    assert steps == 80
    assert "SLSTM 80" in source


def test_meta_horizon_takes_longest_curriculum_episode():
    options = {"horizon": 100, "horizon_schedule": [[20, 200], [60, 400]]}
    learned = {"slstm": random_source("slstm", {"meta_train_config": options})}
    steps, source = meta_horizon(learned)
    assert steps == 400
    assert "SLSTM 400" in source


def test_meta_horizon_assumed_without_provenance():
    steps, source = meta_horizon({"lstm": random_source()})
    assert steps == 100
    assert "assumed" in source


def test_network_note_names_differences():
    provenance = {
        "meta_train_config": {
            "net": "mnist_cnn",
            "net_sizes": {"channels": 16},
            "data": "fashion-mnist",
        },
    }
    assert network_note(provenance, "mnist_cnn", {"channels": 16}, 64) == ""
    note = network_note(provenance, "mnist_cnn", {"channels": 64}, 64)
    assert "sizes channels=16 (here channels=64)" in note
    # Sizes left out on either side are the network's defaults (channels=64).
    note = network_note(provenance, "mnist_cnn", {}, 64)
    assert "sizes channels=16 (here channels=64)" in note
    default = {"meta_train_config": {"net": "mnist_cnn", "net_sizes": {}}}
    assert network_note(default, "mnist_cnn", {"channels": 64}, 64) == ""
    note = network_note(provenance, "cifar_cnn", {"channels": 16}, 64)
    assert "network mnist_cnn (here cifar_cnn)" in note
    assert "does not name" in network_note({}, "mnist_cnn", {}, 64)
    # The data set is compared only when the caller names it.
    assert network_note(provenance, "mnist_cnn", {"channels": 16}, 64, data=None) == ""
    note = network_note(provenance, "mnist_cnn", {"channels": 16}, 64, data="digits")
    assert (
        note == "meta-trained on a different setting: data fashion-mnist (here digits)"
    )
