import pytest
import torch
from torch import nn

from slstm.optim import UpdateNet


def lstm_parameter_count(input_size, hidden, layers):
    first = 4 * hidden * (input_size + hidden + 2)
    rest = 4 * hidden * (2 * hidden + 2)
    return first + (layers - 1) * rest


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_matches_torch_lstm(layers):
    torch.manual_seed(0)
    net = UpdateNet(4, hidden_size=6, num_layers=layers, output_scale=0.5)
    reference = nn.LSTM(4, 6, num_layers=layers)
    net.lstm.load_state_dict(reference.state_dict())
    nn.init.normal_(net.readout.weight)
    nn.init.normal_(net.readout.bias)

    n = 9
    features = torch.randn(n, 4)
    hidden, cell = torch.randn(layers, 6, n), torch.randn(layers, 6, n)
    update, (new_hidden, new_cell) = net(features, (hidden, cell))

    # nn.LSTM wants (sequence, batch, input) and state (layers, batch, hidden).
    output, (ref_hidden, ref_cell) = reference(
        features.unsqueeze(0), (hidden.transpose(1, 2), cell.transpose(1, 2))
    )
    expected = 0.5 * net.readout(output[0]).squeeze(-1)
    torch.testing.assert_close(update, expected)
    torch.testing.assert_close(new_hidden, ref_hidden.transpose(1, 2))
    torch.testing.assert_close(new_cell, ref_cell.transpose(1, 2))


def test_matches_lstm_cell_over_steps():
    torch.manual_seed(1)
    net = UpdateNet(2, hidden_size=5, num_layers=1)
    cell = nn.LSTMCell(2, 5)
    with torch.no_grad():
        cell.weight_ih.copy_(net.lstm.weight_ih_l0)
        cell.weight_hh.copy_(net.lstm.weight_hh_l0)
        cell.bias_ih.copy_(net.lstm.bias_ih_l0)
        cell.bias_hh.copy_(net.lstm.bias_hh_l0)
    state, reference = None, None
    for _ in range(3):
        x = torch.randn(7, 2)
        _, state = net(x, state)
        reference = cell(x, reference)
    torch.testing.assert_close(state[0][0], reference[0].t())
    torch.testing.assert_close(state[1][0], reference[1].t())


def test_untrained_net_proposes_no_update():
    net = UpdateNet(4)
    update, state = net(torch.randn(11, 4))
    assert update.shape == (11,)
    assert torch.equal(update, torch.zeros(11))
    assert state[0].shape == (2, 20, 11)
    assert state[1].shape == (2, 20, 11)


def test_update_is_one_dimensional():
    net = UpdateNet(2)
    nn.init.normal_(net.readout.weight)
    update, _ = net(torch.randn(6, 2))
    assert update.shape == (6,)


def test_state_is_not_a_parameter():
    net = UpdateNet(4, hidden_size=20, num_layers=2)
    count = sum(p.numel() for p in net.parameters())
    assert count == lstm_parameter_count(4, 20, 2) + 20 + 1
    assert list(net.buffers()) == []
    _, state = net(torch.randn(3, 4))
    parameter_ids = {id(p) for p in net.parameters()}
    assert all(id(t) not in parameter_ids for t in state)
    assert sorted(net.state_dict()) == sorted(
        name for name, _ in net.named_parameters()
    )


def test_initial_state_follows_weights():
    net = UpdateNet(2).double()
    hidden, cell = net.initial_state(5)
    assert hidden.dtype == torch.float64
    assert hidden.shape == (2, 20, 5)
    assert torch.count_nonzero(hidden) == 0
    assert torch.count_nonzero(cell) == 0


def test_rejects_wrong_feature_count():
    net = UpdateNet(4)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        net(torch.randn(3, 2))


def test_rejects_wrong_state_shape():
    net = UpdateNet(2)
    with pytest.raises(ValueError, match="initial_state"):
        net(torch.randn(3, 2), net.initial_state(4))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 0},
        {"num_layers": 0},
        {"output_scale": 0.0},
        {"hidden_size": 2.5},
    ],
)
def test_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        UpdateNet(2, **kwargs)


def test_in_place_forward_matches_forward():
    torch.manual_seed(2)
    net = UpdateNet(4, hidden_size=5, num_layers=2)
    nn.init.normal_(net.readout.weight)
    workspace = {}
    for n in (7, 3, 11):  # the workspace grows and shrinks between calls
        features = torch.randn(n, 4)
        state = (torch.randn(2, 5, n), torch.randn(2, 5, n))
        expected_update, (expected_hidden, expected_cell) = net(features, state)
        update = net.forward_in_place(features, state, workspace)
        torch.testing.assert_close(update, expected_update, rtol=0, atol=0)
        torch.testing.assert_close(state[0], expected_hidden, rtol=0, atol=0)
        torch.testing.assert_close(state[1], expected_cell, rtol=0, atol=0)
