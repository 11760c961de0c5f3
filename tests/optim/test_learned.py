import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from slstm.optim import (
    LearnedOptimizer,
    LearnedOptimizerConfig,
    NonFiniteInputError,
    create_update_nets,
    learned_update,
    param_groups_by_kind,
    parameter_kinds,
)


def random_nets(config, seed=0, std=0.3):
    """Networks with a non-zero read-out, so updates depend on every weight."""
    torch.manual_seed(seed)
    nets = create_update_nets(config)
    for net in nets.values():
        nn.init.normal_(net.readout.weight, std=std)
    return nets


def small_cnn(channels=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * 4, 3),
    )


def set_gradients(model, seed, curvature=True):
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
        if curvature:
            p.hessian_diag = torch.rand(p.shape, generator=generator)


# --- the configuration ---------------------------------------------------------


def test_config_json_round_trip():
    config = LearnedOptimizerConfig.preset("slstm", hidden_size=8, preprocess_p=5.0)
    assert LearnedOptimizerConfig.from_json(config.to_json()) == config


def test_config_presets():
    assert LearnedOptimizerConfig.preset("lstm").inputs == ("grad",)
    assert LearnedOptimizerConfig.preset("slstm").inputs == ("grad", "hessian")
    assert LearnedOptimizerConfig.preset("slstm").needs_curvature
    assert not LearnedOptimizerConfig.preset("lstm").needs_curvature
    variant = LearnedOptimizerConfig.preset("slstm", curvature_method="hutchinson")
    assert variant.curvature_method == "hutchinson"


@pytest.mark.parametrize(
    "overrides",
    [
        {"inputs": ()},
        {"inputs": ("grad", "grad")},
        {"inputs": ("momentum",)},
        {"preprocess_p": 0},
        {"hidden_size": 0},
        {"num_layers": True},
        {"output_scale": -0.1},
        {"curvature_method": "newton"},
        {"kinds": ("conv", "recurrent")},
    ],
)
def test_config_rejects_bad_values(overrides):
    with pytest.raises(ValueError):
        LearnedOptimizerConfig(**overrides)


def test_config_rejects_unknown_key():
    with pytest.raises(ValueError, match="unknown .* keys"):
        LearnedOptimizerConfig.from_dict({"inputs": ["grad"], "lr": 1.0})


def test_unknown_preset():
    with pytest.raises(ValueError, match="lstm"):
        LearnedOptimizerConfig.preset("adam")


# --- parameter kinds -----------------------------------------------------------


def test_parameter_kinds_from_modules():
    model = small_cnn()
    assert parameter_kinds(model) == {
        "0.weight": "conv",
        "0.bias": "conv",
        "3.weight": "fc",
        "3.bias": "fc",
    }
    groups = param_groups_by_kind(model)
    assert [group["kind"] for group in groups] == ["conv", "fc"]
    assert [len(group["params"]) for group in groups] == [2, 2]


def test_parameter_kinds_reject_unknown_module():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm2d\)"):
        parameter_kinds(model)


def test_parameter_kinds_skip_frozen():
    model = small_cnn()
    model[0].requires_grad_(False)
    assert list(parameter_kinds(model)) == ["3.weight", "3.bias"]


def test_optimizer_accepts_model_groups_and_bare_params():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = create_update_nets(config)
    model = small_cnn()
    expected = [("conv", 2), ("fc", 2)]
    for params in (model, param_groups_by_kind(model), model.parameters()):
        optimizer = LearnedOptimizer(params, nets, config)
        kinds = [(g["kind"], len(g["params"])) for g in optimizer.param_groups]
        assert kinds == expected


def test_optimizer_accepts_named_parameters():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = random_nets(config)
    model = small_cnn()
    twin = copy.deepcopy(model)
    named = LearnedOptimizer(model.named_parameters(), nets, config)
    kinds = [(g["kind"], g["param_names"]) for g in named.param_groups]
    assert kinds == [("conv", ["0.weight", "0.bias"]), ("fc", ["3.weight", "3.bias"])]
    assert all(isinstance(p, torch.Tensor) for p in named.param_groups[0]["params"])
    bare = LearnedOptimizer(twin.parameters(), nets, config)
    set_gradients(model, seed=0, curvature=False)
    set_gradients(twin, seed=0, curvature=False)
    named.step()
    bare.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_optimizer_accepts_named_groups():
    config = LearnedOptimizerConfig.preset("lstm")
    model = small_cnn()
    groups = [
        {"params": model[0].named_parameters(prefix="0")},
        {"params": list(model[3].named_parameters(prefix="3")), "kind": "fc"},
    ]
    optimizer = LearnedOptimizer(groups, create_update_nets(config), config)
    kinds = [(g["kind"], g["param_names"]) for g in optimizer.param_groups]
    assert kinds == [("conv", ["0.weight", "0.bias"]), ("fc", ["3.weight", "3.bias"])]


def test_step_error_names_named_parameter():
    config = LearnedOptimizerConfig.preset("lstm")
    model = small_cnn()
    optimizer = LearnedOptimizer(
        model.named_parameters(), create_update_nets(config), config
    )
    set_gradients(model, seed=0, curvature=False)
    model[3].weight.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"group 1 \(fc\) named '3.weight'"):
        optimizer.step()


def test_optimizer_rejects_non_parameters():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = create_update_nets(config)
    model = small_cnn()
    weight = model[0].weight
    cases = [
        (None, "params is None (NoneType)"),
        (3, "params is 3 (int)"),
        ("lstm-fashion-mnist", "params is the str 'lstm-fashion-mnist'"),
        (model.state_dict(), "with keys ['0.weight', '0.bias', '3.weight', "),
        (torch.optim.SGD(model.parameters(), lr=0.1), "an optimizer (SGD)"),
        ({"params": [weight]}, "a single parameter-group dict"),
        ([weight, None], "entry 1 of params is None (NoneType)"),
        ([("0.weight", "not a tensor")], "entry 0 of params is ("),
        ([{"params": [weight, 7]}], "entry 1 of parameter group 0's params is 7"),
    ]
    for params, message in cases:
        with pytest.raises(TypeError) as info:
            LearnedOptimizer(params, nets, config)
        assert message in str(info.value), params
        assert "expected" in str(info.value), params
    with pytest.raises(ValueError, match=r"mixes 1 \(name, tensor\) pairs with 1"):
        LearnedOptimizer([("0.weight", weight), model[0].bias], nets, config)


def test_optimizer_explicit_kind_overrides_shape():
    config = LearnedOptimizerConfig.preset("lstm")
    model = small_cnn()
    optimizer = LearnedOptimizer(
        [{"params": model.parameters(), "kind": "fc"}],
        create_update_nets(config),
        config,
    )
    assert optimizer.param_groups[0]["kind"] == "fc"


def test_optimizer_rejects_unknown_kind():
    config = LearnedOptimizerConfig.preset("lstm", kinds=("fc",))
    model = small_cnn()
    with pytest.raises(ValueError, match="'conv' has no update network"):
        LearnedOptimizer(model, create_update_nets(config), config)
    with pytest.raises(ValueError, match="'rnn' has no update network"):
        LearnedOptimizer(
            [{"params": model.parameters(), "kind": "rnn"}],
            create_update_nets(config),
            config,
        )


def test_optimizer_rejects_nets_of_other_config():
    lstm = LearnedOptimizerConfig.preset("lstm")
    slstm = LearnedOptimizerConfig.preset("slstm")
    with pytest.raises(ValueError, match="do not belong together"):
        LearnedOptimizer(small_cnn(), create_update_nets(lstm), slstm)


# --- the functional update -----------------------------------------------------


def test_functional_update_is_differentiable():
    config = LearnedOptimizerConfig.preset("slstm")
    nets = random_nets(config)
    params = [torch.randn(3, 2, requires_grad=True), torch.randn(4, requires_grad=True)]
    # Gradients with a graph of their own: none of it may be used.
    source = torch.randn(10, requires_grad=True)
    grads = [source[:6].view(3, 2) * 2, source[6:] * 3]
    hessians = [g.abs() for g in grads]
    new_params, state = learned_update(
        nets, config, params, grads, hessians, ["conv", "fc"]
    )
    new_params, state = learned_update(
        nets, config, new_params, grads, hessians, ["conv", "fc"], state
    )
    loss = sum((p**2).sum() for p in new_params)
    weights = list(nets.parameters())
    result = torch.autograd.grad(loss, [*params, *weights, source], allow_unused=True)
    assert all(g is not None for g in result[: len(params) + len(weights)])
    assert result[-1] is None


def test_functional_update_shapes_and_state():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = random_nets(config)
    params = [torch.randn(2, 3, 3, 3), torch.randn(5)]
    grads = [torch.randn_like(p) for p in params]
    new_params, state = learned_update(
        nets, config, params, grads, None, ["conv", "fc"]
    )
    assert [p.shape for p in new_params] == [p.shape for p in params]
    assert state[0][0].shape == (2, 20, 54)
    assert state[1][1].shape == (2, 20, 5)


def test_functional_update_rejects_mismatched_lists():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = create_update_nets(config)
    with pytest.raises(ValueError, match="kinds has 1 entries but params has 2"):
        learned_update(
            nets, config, [torch.zeros(2)] * 2, [torch.zeros(2)] * 2, None, ["fc"]
        )


def test_functional_update_needs_hessian_for_slstm():
    config = LearnedOptimizerConfig.preset("slstm")
    nets = create_update_nets(config)
    with pytest.raises(ValueError, match="slstm.curvature.backward"):
        learned_update(nets, config, [torch.zeros(2)], [torch.zeros(2)], None, ["fc"])


class TwoSteps(nn.Module):
    """Two learned steps as a module, so functional_call can feed it weights."""

    def __init__(self, nets, config, grads, hessians, kinds):
        super().__init__()
        self.nets = nets
        self.config = config
        self.grads, self.hessians, self.kinds = grads, hessians, kinds

    def forward(self, params):
        args = (self.nets, self.config)
        inputs = (self.grads, self.hessians, self.kinds)
        params, state = learned_update(*args, params, *inputs)
        params, state = learned_update(*args, params, *inputs, state)
        return params, state


def test_gradcheck_float64():
    config = LearnedOptimizerConfig.preset("slstm", hidden_size=3)
    nets = random_nets(config, std=1.0).double()
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 2), (3,)]
    grads = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    hessians = [
        torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes
    ]
    grads[1][0] = 0.0  # a dead unit: g = h = 0
    hessians[1][0] = 0.0
    module = TwoSteps(nets, config, grads, hessians, ["conv", "fc"])
    names = [name for name, _ in module.named_parameters()]

    def two_steps(*inputs):
        weights = dict(zip(names, inputs[: len(names)], strict=True))
        params = list(inputs[len(names) :])
        new_params, state = functional_call(module, weights, (params,))
        return (*new_params, *state[0], *state[1])

    inputs = [p.detach().clone().requires_grad_() for p in module.parameters()]
    inputs += [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(two_steps, inputs, eps=1e-6, atol=1e-6)


# --- the optimizer ---------------------------------------------------------------


@pytest.mark.parametrize("preset", ["lstm", "slstm"])
def test_step_agrees_with_functional_update(preset):
    config = LearnedOptimizerConfig.preset(preset)
    nets = random_nets(config)
    model = small_cnn()
    start = [p.detach().clone() for p in model.parameters()]
    kinds = list(parameter_kinds(model).values())
    optimizer = LearnedOptimizer(model, nets, config)

    params, state = start, None
    for step in range(3):
        set_gradients(model, seed=step)
        grads = [p.grad.clone() for p in model.parameters()]
        hessians = [p.hessian_diag.clone() for p in model.parameters()]
        optimizer.step()
        with torch.no_grad():
            params, state = learned_update(
                nets, config, params, grads, hessians, kinds, state
            )
            # Weights changed between steps (as in joint meta-training) must
            # reach the next step: nothing may cache the old ones.
            for net in nets.values():
                net.lstm.weight_hh_l0.add_(0.05)
                net.lstm.bias_ih_l1.mul_(1.1)
    for p, expected in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=0)
    for p, (hidden, cell) in zip(model.parameters(), state, strict=True):
        torch.testing.assert_close(optimizer.state[p]["hidden"], hidden, rtol=0, atol=0)
        torch.testing.assert_close(optimizer.state[p]["cell"], cell, rtol=0, atol=0)
        assert optimizer.state[p]["step"] == 3


def test_tensors_get_disjoint_state():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = random_nets(config)
    first, second = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    optimizer = LearnedOptimizer(
        [{"params": [first, second], "kind": "fc"}], nets, config
    )
    first.grad = torch.tensor([1.0, -2.0, 3.0, 0.5])
    second.grad = torch.tensor([-1e-3, 4.0, 0.0, 2.0])
    optimizer.step()
    state_first, state_second = optimizer.state[first], optimizer.state[second]
    assert state_first["hidden"].shape == (2, 20, 4)
    assert not torch.equal(state_first["hidden"], state_second["hidden"])
    pointers = {
        t.untyped_storage().data_ptr()
        for s in (state_first, state_second)
        for t in (s["hidden"], s["cell"])
    }
    assert len(pointers) == 4

    # A step on `first` alone leaves the state of `second` untouched.
    saved = copy.deepcopy(state_second)
    second.grad = None
    optimizer.step()
    assert torch.equal(optimizer.state[second]["hidden"], saved["hidden"])
    assert torch.equal(optimizer.state[second]["cell"], saved["cell"])
    assert optimizer.state[first]["step"] == 2
    assert optimizer.state[second]["step"] == 1

    # The same gradient in both tensors at the same position gives the same
    # update: coordinates are independent and share the network.
    first.grad = torch.ones(4)
    second.grad = torch.ones(4)
    optimizer.reset_state()
    before = first.detach() - second.detach()
    optimizer.step()
    torch.testing.assert_close(first.detach() - second.detach(), before)


def test_state_dict_round_trip_continues_identically():
    config = LearnedOptimizerConfig.preset("slstm")
    nets = random_nets(config)
    model = small_cnn()
    optimizer = LearnedOptimizer(model, nets, config)
    for step in range(2):
        set_gradients(model, seed=step)
        optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    twin = copy.deepcopy(model)
    twin_optimizer = LearnedOptimizer(twin, nets, config)
    twin_optimizer.load_state_dict(saved)
    for step in range(2, 4):
        set_gradients(model, seed=step)
        set_gradients(twin, seed=step)
        optimizer.step()
        twin_optimizer.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_load_state_dict_rejects_other_kinds():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = create_update_nets(config)
    model = small_cnn()
    optimizer = LearnedOptimizer(model, nets, config)
    swapped = LearnedOptimizer(
        [
            {"params": list(model[3].parameters()), "kind": "fc"},
            {"params": list(model[0].parameters()), "kind": "conv"},
        ],
        nets,
        config,
    )
    with pytest.raises(ValueError, match="kinds"):
        swapped.load_state_dict(optimizer.state_dict())


def test_load_state_dict_rejects_other_sizes():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = create_update_nets(config)
    small, large = nn.Linear(5, 2), nn.Linear(10, 2)
    optimizer = LearnedOptimizer(small, nets, config)
    small(torch.randn(1, 5)).sum().backward()
    optimizer.step()
    other = LearnedOptimizer(large, nets, config)
    with pytest.raises(ValueError) as info:
        other.load_state_dict(optimizer.state_dict())
    message = str(info.value)
    assert "state_dict['state'][0]['hidden'] has shape (2, 20, 10)" in message
    assert "parameter 0 of group 0 (fc)" in message
    assert "needs state of shape (2, 20, 20)" in message
    assert "saved from an optimizer over the same model" in message
    assert len(other.state) == 0

    fewer = LearnedOptimizer([large.weight], nets, config)
    with pytest.raises(ValueError, match="has 2 parameters but this optimizer's has 1"):
        fewer.load_state_dict(optimizer.state_dict())

    incomplete = copy.deepcopy(optimizer.state_dict())
    del incomplete["state"][1]["cell"]
    same = LearnedOptimizer(copy.deepcopy(small), nets, config)
    with pytest.raises(ValueError, match=r"\['state'\]\[1\] has no 'cell' tensor"):
        same.load_state_dict(incomplete)


def test_non_finite_error_has_learned_advice():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = create_update_nets(config)
    model = small_cnn()
    params = list(model.parameters())
    grads = [torch.zeros_like(p) for p in params]
    grads[0][0, 0, 0, 0] = float("inf")
    kinds = ["conv", "conv", "fc", "fc"]
    with pytest.raises(NonFiniteInputError) as info:
        learned_update(nets, config, params, grads, None, kinds)
    assert "learning rate, but a smaller output scale" in str(info.value)
    assert "slstm calibrate" in str(info.value)
    assert "Lower the learning rate" not in str(info.value)


def test_reset_state_restarts_run():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = random_nets(config)
    model = small_cnn()
    optimizer = LearnedOptimizer(model, nets, config)
    start = [p.detach().clone() for p in model.parameters()]
    set_gradients(model, seed=0, curvature=False)
    optimizer.step()
    first_update = [
        p.detach() - s for p, s in zip(model.parameters(), start, strict=True)
    ]
    optimizer.step()  # the same gradient again, now with state
    optimizer.reset_state()
    assert len(optimizer.state) == 0
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    for p, b, u in zip(model.parameters(), before, first_update, strict=True):
        torch.testing.assert_close(p.detach() - b, u)


def test_slstm_step_without_curvature_fails():
    config = LearnedOptimizerConfig.preset("slstm")
    model = small_cnn()
    optimizer = LearnedOptimizer(model, create_update_nets(config), config)
    set_gradients(model, seed=0)
    optimizer.zero_grad()
    assert all(getattr(p, "hessian_diag", None) is None for p in model.parameters())
    model(torch.randn(2, 1, 4, 4)).sum().backward()
    with pytest.raises(ValueError, match="slstm.curvature.backward"):
        optimizer.step()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["grad", "hessian_diag"])
def test_step_rejects_non_finite_inputs(bad, where):
    config = LearnedOptimizerConfig.preset("slstm")
    model = small_cnn()
    optimizer = LearnedOptimizer(model, random_nets(config), config)
    set_gradients(model, seed=0)
    getattr(model[3].weight, where)[1, 2] = bad
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteInputError, match="parameter 0 of group 1"):
        optimizer.step()
    assert torch.equal(before[2], model[3].weight.detach())


def test_zero_gradient_and_curvature_stay_finite():
    config = LearnedOptimizerConfig.preset("slstm")
    nets = random_nets(config)
    params = [torch.randn(3, requires_grad=True)]
    zeros = [torch.zeros(3)]
    new_params, state = learned_update(nets, config, params, zeros, zeros, ["fc"])
    new_params, state = learned_update(
        nets, config, new_params, zeros, zeros, ["fc"], state
    )
    loss = (new_params[0] ** 2).sum() + state[0][0].sum()
    loss.backward()
    assert torch.isfinite(new_params[0]).all()
    assert torch.isfinite(params[0].grad).all()
    for weight in nets.parameters():
        assert weight.grad is None or torch.isfinite(weight.grad).all()


def meta_step(nets, config, meta_optimizer, seed):
    """One meta-step on a random quadratic: minimise the sum of losses of a
    five-step unroll."""
    generator = torch.Generator().manual_seed(seed)
    scales = [torch.rand(4, generator=generator) + 0.1 for _ in range(2)]
    params = [torch.randn(4, generator=generator) for _ in range(2)]
    state = None
    meta_loss = 0.0
    for _ in range(5):
        grads = [a * p.detach() for a, p in zip(scales, params, strict=True)]
        params, state = learned_update(
            nets, config, params, grads, scales, ["conv", "fc"], state
        )
        meta_loss = meta_loss + sum(
            0.5 * (a * p**2).sum() for a, p in zip(scales, params, strict=True)
        )
    meta_optimizer.zero_grad()
    meta_loss.backward()
    meta_optimizer.step()


def test_every_weight_changes_after_meta_step():
    config = LearnedOptimizerConfig.preset("slstm")
    nets = create_update_nets(config)
    named = dict(nets.named_parameters())
    meta_optimizer = torch.optim.Adam(nets.parameters(), lr=1e-2)
    initial = {name: w.detach().clone() for name, w in named.items()}

    meta_step(nets, config, meta_optimizer, seed=0)
    # With the zero read-out, the first meta-gradient reaches only the read-out:
    # every update is zero whatever the LSTM computes.
    for name, weight in named.items():
        changed = not torch.equal(weight.detach(), initial[name])
        assert changed == ("readout" in name), name

    after_first = {name: w.detach().clone() for name, w in named.items()}
    meta_step(nets, config, meta_optimizer, seed=1)
    for name, weight in named.items():
        assert not torch.equal(weight.detach(), after_first[name]), name


def test_chunked_step_matches_whole_step():
    config = LearnedOptimizerConfig.preset("slstm")
    nets = random_nets(config)
    model = small_cnn(channels=3)
    twin = copy.deepcopy(model)
    whole = LearnedOptimizer(model, nets, config)
    chunked = LearnedOptimizer(twin, nets, config, chunk_size=5)
    for step in range(3):
        set_gradients(model, seed=step)
        set_gradients(twin, seed=step)
        whole.step()
        chunked.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(whole.state[p]["hidden"], chunked.state[q]["hidden"])
        torch.testing.assert_close(whole.state[p]["cell"], chunked.state[q]["cell"])


def test_rejects_bad_chunk_size():
    config = LearnedOptimizerConfig.preset("lstm")
    with pytest.raises(ValueError, match="chunk_size"):
        LearnedOptimizer(small_cnn(), create_update_nets(config), config, chunk_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_step_on_cuda_matches_cpu():
    config = LearnedOptimizerConfig.preset("slstm")
    nets = random_nets(config)
    model = small_cnn()
    twin = copy.deepcopy(model).cuda()
    cpu_optimizer = LearnedOptimizer(model, nets, config)
    cuda_optimizer = LearnedOptimizer(twin, copy.deepcopy(nets).cuda(), config)
    for step in range(2):
        set_gradients(model, seed=step)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            q.grad = p.grad.cuda()
            q.hessian_diag = p.hessian_diag.cuda()
        cpu_optimizer.step()
        cuda_optimizer.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-4, atol=1e-5)
        assert cuda_optimizer.state[q]["hidden"].is_cuda


def test_float64_nets_serve_float32_params():
    config = LearnedOptimizerConfig.preset("lstm")
    nets = random_nets(config).to(torch.float64)
    params = [torch.zeros(3)]
    new_params, _ = learned_update(nets, config, params, [torch.ones(3)], None, ["fc"])
    assert new_params[0].dtype == torch.float32
    assert torch.count_nonzero(new_params[0]) == 3


@pytest.mark.parametrize("hessian_dtype", [torch.float64, torch.float16])
def test_step_takes_hessian_of_other_dtype(hessian_dtype):
    config = LearnedOptimizerConfig.preset("slstm")
    nets = random_nets(config)
    params = [nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(3))]
    grads = [torch.linspace(-1, 1, p.numel()) for p in params]
    hessians = [torch.linspace(0, 2, p.numel()).to(hessian_dtype) for p in params]
    for p, grad, hessian in zip(params, grads, hessians, strict=True):
        p.grad, p.hessian_diag = grad, hessian
    optimizer = LearnedOptimizer([{"params": params, "kind": "fc"}], nets, config)
    optimizer.step()
    expected, _ = learned_update(
        nets, config, [torch.zeros(5), torch.zeros(3)], grads, hessians, ["fc"] * 2
    )
    for p, value in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), value, rtol=0, atol=0)


def test_nets_on_other_device_rejected():
    config = LearnedOptimizerConfig.preset("lstm")
    params = [torch.zeros(3)]
    meta = random_nets(config).to("meta")
    with pytest.raises(ValueError, match="move the networks"):
        learned_update(meta, config, params, [torch.ones(3)], None, ["fc"])


def test_lr_scales_update_under_scheduler():
    config = LearnedOptimizerConfig.preset("slstm")
    nets = random_nets(config)
    plain_model, scaled_model = small_cnn(), small_cnn()
    start = [p.detach().clone() for p in plain_model.parameters()]
    plain = LearnedOptimizer(plain_model, nets, config)
    scaled = LearnedOptimizer(scaled_model, nets, config, lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(scaled, step_size=1, gamma=0.5)

    multipliers = []
    for step in range(3):
        for model in (plain_model, scaled_model):
            set_gradients(model, seed=step)
        before = [p.detach().clone() for p in plain_model.parameters()]
        plain.step()
        multipliers.append(scaled.param_groups[0]["lr"])
        before_scaled = [p.detach().clone() for p in scaled_model.parameters()]
        scaled.step()
        scheduler.step()
        # The networks never see lr, so the update is the plain one times lr
        # for as long as both models received the same gradients.
        if step == 0:
            for p, q, b, bs in zip(plain_model.parameters(),
                                   scaled_model.parameters(), before,
                                   before_scaled, strict=True):  # fmt: skip
                torch.testing.assert_close(q - bs, 0.5 * (p - b))
    assert multipliers == [0.5, 0.25, 0.125]

    # The LSTM state does not depend on lr.
    for p, q in zip(plain_model.parameters(), scaled_model.parameters(), strict=True):
        torch.testing.assert_close(plain.state[p]["hidden"], scaled.state[q]["hidden"])
    assert any(
        not torch.equal(p, s)
        for p, s in zip(start, plain_model.parameters(), strict=True)
    )


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "1", True])
def test_rejects_bad_lr(bad):
    config = LearnedOptimizerConfig.preset("lstm")
    with pytest.raises(ValueError, match="lr is a multiplier on the learned update"):
        LearnedOptimizer(small_cnn(), random_nets(config), config, lr=bad)


def test_load_state_dict_rejects_other_inputs():
    model = small_cnn()
    slstm_config = LearnedOptimizerConfig.preset("slstm")
    lstm_config = LearnedOptimizerConfig.preset("lstm")
    slstm_optimizer = LearnedOptimizer(model, random_nets(slstm_config), slstm_config)
    set_gradients(model, seed=0)
    slstm_optimizer.step()
    saved = copy.deepcopy(slstm_optimizer.state_dict())
    assert saved["inputs"] == ["grad", "hessian"]
    lstm_optimizer = LearnedOptimizer(model, random_nets(lstm_config), lstm_config)
    with pytest.raises(ValueError, match="networks that read \\('grad', 'hessian'\\)"):
        lstm_optimizer.load_state_dict(saved)
    # A state dict saved before the inputs were recorded still loads.
    del saved["inputs"]
    lstm_optimizer.load_state_dict(saved)
