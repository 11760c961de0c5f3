"""The update network: a coordinatewise LSTM with a linear read-out.

One network is shared by every coordinate of the parameters it serves, and each
coordinate carries its own hidden and cell state. Each optimizer step is thus one
time step of ``N`` independent sequences, processed as a batch.

The state is stored feature-major, ``(num_layers, hidden_size, N)``: each gate is
then a contiguous block of rows of the gate matrix, and the elementwise gate
arithmetic runs on contiguous memory. ``bench/optimizers.py`` times this LSTM
against two ``nn.LSTMCell`` layers with the same weights; see
``docs/benchmarks.md`` for the numbers.
"""

import math

import torch
from torch import nn

LSTMState = tuple[torch.Tensor, torch.Tensor]


class CoordinatewiseLSTM(nn.Module):
    """A stack of forget-gate LSTM layers applied to every coordinate independently.

    Computes exactly the equations of ``torch.nn.LSTM`` (gates in the order input,
    forget, cell, output) and uses its parameter names and initialisation, so
    ``lstm.load_state_dict(nn.LSTM(input_size, hidden_size, num_layers)
    .state_dict())`` reproduces an ``nn.LSTM``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size
            gate_rows = 4 * hidden_size
            self.register_parameter(
                f"weight_ih_l{layer}", nn.Parameter(torch.empty(gate_rows, layer_input))
            )
            self.register_parameter(
                f"weight_hh_l{layer}", nn.Parameter(torch.empty(gate_rows, hidden_size))
            )
            self.register_parameter(
                f"bias_ih_l{layer}", nn.Parameter(torch.empty(gate_rows))
            )
            self.register_parameter(
                f"bias_hh_l{layer}", nn.Parameter(torch.empty(gate_rows))
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every weight from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer_weights(self, layer: int):
        """Return ``(weight_ih, weight_hh, bias_ih, bias_hh)`` of ``layer``."""
        return (
            getattr(self, f"weight_ih_l{layer}"),
            getattr(self, f"weight_hh_l{layer}"),
            getattr(self, f"bias_ih_l{layer}"),
            getattr(self, f"bias_hh_l{layer}"),
        )

    def fused_weight(self, layer: int) -> torch.Tensor:
        """Return ``[W_ih W_hh b]`` of ``layer``, shape ``(4H, in + H + 1)``, with
        the candidate rows doubled.

        One matrix product per layer, ``[W_ih W_hh b] @ [x; h; 1]``, ran about
        twice as fast on 65,536 coordinates (one thread) as two addmm calls that
        each rewrite the wide ``(4H, N)`` gate matrix. ``tanh(x) = 2 sigmoid(2x)
        - 1``, and torch's CPU sigmoid is several times faster than its tanh, so
        doubling the candidate rows lets all four gates share one sigmoid.
        """
        size = self.hidden_size
        weight_ih, weight_hh, bias_ih, bias_hh = self.layer_weights(layer)
        weight = torch.cat((weight_ih, weight_hh, (bias_ih + bias_hh).unsqueeze(1)), 1)
        return torch.cat(
            (weight[: 2 * size], 2 * weight[2 * size : 3 * size], weight[3 * size :])
        )

    def forward(
        self, inputs: torch.Tensor, state: LSTMState
    ) -> tuple[torch.Tensor, LSTMState]:
        """Advance every coordinate by one step.

        Args:
            inputs: ``(input_size, N)``, one column per coordinate.
            state: ``(hidden, cell)``, each ``(num_layers, hidden_size, N)``.

        Returns:
            The top layer's new hidden state ``(hidden_size, N)`` and the new
            ``(hidden, cell)`` state.
        """
        hidden, cell = state
        size = self.hidden_size
        ones = inputs.new_ones(1, inputs.shape[1])
        layer_input = inputs
        new_hidden, new_cell = [], []
        for layer in range(self.num_layers):
            stacked = torch.cat((layer_input, hidden[layer], ones), dim=0)
            gates = torch.sigmoid(self.fused_weight(layer) @ stacked)
            input_gate = gates[:size]
            forget_gate = gates[size : 2 * size]
            candidate = 2 * gates[2 * size : 3 * size] - 1
            output_gate = gates[3 * size :]
            layer_cell = torch.addcmul(forget_gate * cell[layer], input_gate, candidate)
            layer_hidden = output_gate * (2 * torch.sigmoid(2 * layer_cell) - 1)
            new_hidden.append(layer_hidden)
            new_cell.append(layer_cell)
            layer_input = layer_hidden
        return layer_input, (torch.stack(new_hidden), torch.stack(new_cell))

    @torch.no_grad()
    def forward_in_place(
        self, inputs: torch.Tensor, state: LSTMState, workspace: dict | None = None
    ) -> torch.Tensor:
        """Advance every coordinate by one step, overwriting ``state``.

        Computes the same numbers as ``forward`` with the same operations, without
        autograd and without allocating per-coordinate temporaries beyond the
        reusable buffers kept in ``workspace`` (a dict the caller keeps between
        calls). Each layer reads its old hidden and cell state before writing the
        new ones. Returns the top layer's new hidden state, a view of ``state``.

        A ``"fused_weights"`` dict in ``workspace`` keeps each layer's
        ``fused_weight`` between calls; a caller that puts one there must
        replace it whenever the weights change (``LearnedOptimizer.step`` does
        so once per step, and then runs many blocks of coordinates).
        """
        hidden, cell = state
        size = self.hidden_size
        n = inputs.shape[1]
        workspace = {} if workspace is None else workspace
        layer_input = inputs
        cache = workspace.get("fused_weights")
        for layer in range(self.num_layers):
            if cache is None:
                weight = self.fused_weight(layer)
            else:
                weight = cache.get((id(self), layer))
                if weight is None:
                    weight = cache[(id(self), layer)] = self.fused_weight(layer)
            rows = weight.shape[1]
            stacked = workspace_buffer(workspace, "stacked", rows * n, inputs).view(
                rows, n
            )
            stacked[: rows - size - 1] = layer_input
            stacked[rows - size - 1 : rows - 1] = hidden[layer]
            stacked[rows - 1] = 1.0
            gates = workspace_buffer(workspace, "gates", 4 * size * n, inputs).view(
                4 * size, n
            )
            torch.mm(weight, stacked, out=gates)
            gates.sigmoid_()
            input_gate = gates[:size]
            forget_gate = gates[size : 2 * size]
            candidate = gates[2 * size : 3 * size].mul_(2).sub_(1)
            output_gate = gates[3 * size :]
            layer_cell = cell[layer].mul_(forget_gate).addcmul_(input_gate, candidate)
            layer_hidden = torch.mul(layer_cell, 2, out=hidden[layer])
            layer_hidden.sigmoid_().mul_(2).sub_(1).mul_(output_gate)
            layer_input = layer_hidden
        return layer_input


def workspace_buffer(workspace: dict, name: str, numel: int, like: torch.Tensor):
    """Return the first ``numel`` elements of a reusable flat buffer."""
    buffer = workspace.get(name)
    if (
        buffer is None
        or buffer.numel() < numel
        or buffer.dtype != like.dtype
        or buffer.device != like.device
    ):
        buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
        workspace[name] = buffer
    return buffer[:numel]


class UpdateNet(nn.Module):
    """Map per-coordinate features to per-coordinate parameter updates.

    ``update = output_scale * readout(lstm(features))``, and the optimizer applies
    ``theta <- theta + update``. The read-out starts at zero, so an untrained
    network proposes no update. A default-initialised read-out instead emits an
    almost constant update on every coordinate, which drives all weights the same
    way and can kill every ReLU unit before meta-training gets a useful gradient.

    The recurrent state is an argument and a return value, never a parameter or
    buffer, so ``parameters()`` and ``state_dict()`` hold only trainable weights.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 20,
        num_layers: int = 2,
        output_scale: float = 0.1,
    ):
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(output_scale, int | float) and output_scale > 0):
            raise ValueError(f"output_scale must be positive, got {output_scale!r}")
        self.output_scale = float(output_scale)
        self.lstm = CoordinatewiseLSTM(input_size, hidden_size, num_layers)
        self.readout = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    @property
    def input_size(self) -> int:
        return self.lstm.input_size

    @property
    def hidden_size(self) -> int:
        return self.lstm.hidden_size

    @property
    def num_layers(self) -> int:
        return self.lstm.num_layers

    def initial_state(self, n: int, device=None, dtype=None) -> LSTMState:
        """Return zero ``(hidden, cell)`` state for ``n`` coordinates.

        Each tensor has shape ``(num_layers, hidden_size, n)``; ``device`` and
        ``dtype`` default to those of the network's weights.
        """
        reference = self.readout.weight
        shape = (self.num_layers, self.hidden_size, n)
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        return (
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    def forward(
        self, features: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        """Compute the update for ``N`` coordinates.

        Args:
            features: ``(N, input_size)``, from ``slstm.optim.build_features``.
            state: ``(hidden, cell)``, each ``(num_layers, hidden_size, N)``, or
                None for a fresh (zero) state.

        Returns:
            ``update`` of shape ``(N,)`` (in parameter units) and the new state.
        """
        n = self._check_features(features)
        if state is None:
            state = self.initial_state(n, features.device, features.dtype)
        self._check_state(state, n)
        top_hidden, new_state = self.lstm(features.t(), state)
        return self._read_out(top_hidden), new_state

    @torch.no_grad()
    def forward_in_place(
        self, features: torch.Tensor, state: LSTMState, workspace: dict | None = None
    ) -> torch.Tensor:
        """Compute the update like ``forward`` and write the new state into
        ``state``, without autograd; ``workspace`` is a dict of reusable buffers
        that the caller keeps between calls."""
        self._check_state(state, self._check_features(features))
        top_hidden = self.lstm.forward_in_place(features.t(), state, workspace)
        return self._read_out(top_hidden)

    def _read_out(self, top_hidden: torch.Tensor) -> torch.Tensor:
        # (H,) @ (H, N) -> (N,): the update stays one-dimensional, so it can
        # never broadcast against an (N,) tensor into (N, N).
        update = self.readout.weight.squeeze(0) @ top_hidden + self.readout.bias
        return self.output_scale * update

    def _check_features(self, features: torch.Tensor) -> int:
        if features.dim() != 2 or features.shape[1] != self.input_size:
            raise ValueError(
                f"features must have shape (N, {self.input_size}), got "
                f"{tuple(features.shape)}"
            )
        return features.shape[0]

    def _check_state(self, state: LSTMState, n: int) -> None:
        expected = (self.num_layers, self.hidden_size, n)
        for tensor in state:
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"LSTM state must have shape {expected} for {n} coordinates, "
                    f"got {tuple(tensor.shape)}; start from initial_state({n})"
                )
