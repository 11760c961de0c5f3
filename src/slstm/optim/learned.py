"""The learned LSTM and SLSTM optimizers: a functional update and a torch.optim API.

``learned_update`` is the differentiable form used by meta-training;
``LearnedOptimizer`` applies the same computation in place, under ``no_grad``,
inside an ordinary training loop. Both run each parameter tensor through the
update network of its kind with that tensor's own slice of recurrent state.
"""

import math
import reprlib
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from slstm.optim.checks import (
    LEARNED_ADVICE,
    MISSING_HESSIAN_HINT,
    check_finite,
    step_inputs,
)
from slstm.optim.config import LearnedOptimizerConfig
from slstm.optim.features import build_features, build_features_into, num_features
from slstm.optim.kinds import infer_kinds_from_shapes, param_groups_by_kind
from slstm.optim.update_net import LSTMState, UpdateNet, workspace_buffer


def create_update_nets(config: LearnedOptimizerConfig) -> nn.ModuleDict:
    """Return ``{kind: UpdateNet}``, one freshly initialised network per kind."""
    return nn.ModuleDict(
        {
            kind: UpdateNet(
                config.num_features,
                hidden_size=config.hidden_size,
                num_layers=config.num_layers,
                output_scale=config.output_scale,
            )
            for kind in config.kinds
        }
    )


def detach_state(state: Sequence[LSTMState | None]) -> list[LSTMState | None]:
    """Return ``state`` cut from the autograd graph, for truncated back-propagation."""
    return [
        None if entry is None else tuple(t.detach() for t in entry) for entry in state
    ]


def _check_nets(nets: Mapping[str, nn.Module], config: LearnedOptimizerConfig):
    for kind in config.kinds:
        if kind not in nets:
            raise ValueError(
                f"no update network for parameter kind {kind!r}; nets has "
                f"{sorted(nets)}. Build them with create_update_nets(config)"
            )
    for kind, net in nets.items():
        if not isinstance(net, UpdateNet):
            raise TypeError(
                f"nets[{kind!r}] must be an UpdateNet, got {type(net).__name__}"
            )
        if net.input_size != config.num_features:
            raise ValueError(
                f"nets[{kind!r}] takes {net.input_size} input features but the "
                f"configuration with inputs {config.inputs} builds "
                f"{config.num_features}; the networks and the configuration do not "
                f"belong together"
            )


def compute_update(
    net: UpdateNet,
    config: LearnedOptimizerConfig,
    grad: torch.Tensor,
    hessian_diag: torch.Tensor | None,
    state: LSTMState | None,
    *,
    name: str = "parameter",
    check_inputs: bool = True,
    workspace: dict | None = None,
) -> tuple[torch.Tensor, LSTMState]:
    """Return the update of one parameter tensor (same shape as ``grad``) and the
    new state.

    ``grad`` and ``hessian_diag`` are detached here: meta-gradients reach the
    network's weights and the parameters, never the optimizer's inputs. With a
    ``workspace`` dict, the step runs without autograd and overwrites ``state``
    (see ``UpdateNet.forward_in_place``), and the returned state is ``state``.
    """
    grad = grad.detach()
    if hessian_diag is not None:
        hessian_diag = hessian_diag.detach()
    if check_inputs:
        check_finite(grad, f"the gradient of {name}", LEARNED_ADVICE)
        if config.needs_curvature and hessian_diag is not None:
            check_finite(
                hessian_diag, f"the diagonal Hessian of {name}", LEARNED_ADVICE
            )
    if config.needs_curvature and hessian_diag is None:
        raise ValueError(
            f"{name} has no diagonal Hessian, which the inputs {config.inputs} "
            f"need; {MISSING_HESSIAN_HINT}"
        )
    weight = net.readout.weight
    if grad.device != weight.device:
        raise ValueError(
            f"{name} is on {grad.device} but its update network is on "
            f"{weight.device}; move the networks with nets.to({str(grad.device)!r})"
        )
    if workspace is None:
        features = build_features(grad, hessian_diag, config).to(weight.dtype)
        update, new_state = net(features, state)
    else:
        if grad.dtype == weight.dtype and (
            hessian_diag is None or hessian_diag.dtype == weight.dtype
        ):
            rows = num_features(config)
            features = workspace_buffer(
                workspace, "features", rows * grad.numel(), weight
            )
            features = build_features_into(
                features.view(rows, -1), grad, hessian_diag, config
            ).t()
        else:
            features = build_features(grad, hessian_diag, config).to(weight.dtype)
        update, new_state = net.forward_in_place(features, state, workspace), state
    return update.view_as(grad).to(grad.dtype), new_state


def learned_update(
    nets: Mapping[str, UpdateNet],
    config: LearnedOptimizerConfig,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    hessian_diags: Sequence[torch.Tensor | None] | None,
    kinds: Sequence[str],
    state: Sequence[LSTMState | None] | None = None,
    *,
    check_inputs: bool = True,
) -> tuple[list[torch.Tensor], list[LSTMState]]:
    """Apply one learned step to a list of parameter tensors, functionally.

    Returns ``new_params[i] = params[i] + update_i`` and the new per-tensor state,
    differentiable with respect to the networks' weights, ``params`` and the
    incoming ``state``. ``grads`` and ``hessian_diags`` are detached.

    Args:
        nets: ``{kind: UpdateNet}`` from ``create_update_nets``.
        config: the configuration the networks were built with.
        params, grads: tensors of matching shapes, one entry per parameter.
        hessian_diags: one diagonal Hessian per parameter when
            ``config.inputs`` contains ``"hessian"``; otherwise None or ignored.
        kinds: the kind of each parameter (a key of ``nets``).
        state: the ``state`` returned by the previous call, or None for a fresh
            (zero) state. Entry ``i`` is ``(hidden, cell)``, each of shape
            ``(num_layers, hidden_size, params[i].numel())``.
        check_inputs: raise ``NonFiniteInputError`` on NaN or inf inputs.
    """
    count = len(params)
    if hessian_diags is None:
        hessian_diags = [None] * count
    if state is None:
        state = [None] * count
    for label, values in (
        ("grads", grads),
        ("hessian_diags", hessian_diags),
        ("kinds", kinds),
        ("state", state),
    ):
        if len(values) != count:
            raise ValueError(
                f"{label} has {len(values)} entries but params has {count}; pass one "
                f"entry per parameter tensor"
            )
    _check_nets(nets, config)
    new_params, new_state = [], []
    for index, (p, grad, hessian_diag, kind, entry) in enumerate(
        zip(params, grads, hessian_diags, kinds, state, strict=True)
    ):
        if kind not in nets:
            raise ValueError(
                f"params[{index}] has kind {kind!r}, which has no update network; "
                f"expected one of {sorted(nets)}"
            )
        if grad.shape != p.shape:
            raise ValueError(
                f"grads[{index}] has shape {tuple(grad.shape)} but params[{index}] "
                f"has shape {tuple(p.shape)}"
            )
        update, entry = compute_update(
            nets[kind],
            config,
            grad,
            hessian_diag,
            entry,
            name=f"params[{index}] (kind {kind!r})",
            check_inputs=check_inputs,
        )
        new_params.append(p + update)
        new_state.append(entry)
    return new_params, new_state


class LearnedOptimizer(torch.optim.Optimizer):
    """Drive a model's training with meta-trained update networks.

    Each step feeds every coordinate's gradient (and, for SLSTM, ``p.hessian_diag``)
    to the update network of the parameter's kind and adds the returned update.
    The per-coordinate LSTM state lives in ``self.state[p]`` as ``"hidden"`` and
    ``"cell"`` tensors of shape ``(num_layers, hidden_size, p.numel())``, so
    ``state_dict()`` and ``load_state_dict()`` carry it. The networks themselves
    are fixed weights, not part of the optimizer's state: build a second optimizer
    from the same networks before loading a state dict into it.

    Args:
        params: a model (its kinds are read from its modules), parameter groups
            with a ``"kind"`` key, or a parameter list such as
            ``model.parameters()`` or ``model.named_parameters()`` (kinds
            guessed from shapes, see ``infer_kinds_from_shapes``). As in
            ``torch.optim``, named parameters put their names under each
            group's ``"param_names"``.
        nets: ``{kind: UpdateNet}``, on the parameters' device.
        config: the configuration the networks were built with.
        lr: a multiplier on the learned update; 1.0 (the default) applies it as
            meta-trained. The update networks never see it, so their inputs and
            state do not change with it. It lets ``torch.optim.lr_scheduler``
            (``StepLR``, ``LambdaLR``, a warm-up) scale the learned step over a
            run, per group like a learning rate.
        check_inputs: raise ``NonFiniteInputError`` on NaN or inf gradients or
            curvature instead of writing NaN into the parameters.
        chunk_size: coordinates per block of a step. The LSTM's temporaries grow
            with ``chunk_size``, not with ``p.numel()``, so a step needs the state
            (``4 * num_layers * hidden_size`` floats per coordinate) plus a
            constant.
    """

    def __init__(
        self,
        params,
        nets: Mapping[str, UpdateNet],
        config: LearnedOptimizerConfig,
        *,
        lr: float = 1.0,
        check_inputs: bool = True,
        chunk_size: int = 16384,
    ):
        if not isinstance(config, LearnedOptimizerConfig):
            raise TypeError(
                f"config must be a LearnedOptimizerConfig, got {type(config).__name__}"
            )
        _check_nets(nets, config)
        if (
            isinstance(chunk_size, bool)
            or not isinstance(chunk_size, int)
            or chunk_size < 1
        ):
            raise ValueError(
                f"chunk_size must be a positive integer, got {chunk_size!r}"
            )
        # Set before the base class calls add_param_group, which reads them.
        self.nets = nets
        self.config = config
        # Scratch buffers of the in-place step, reused across blocks and steps.
        self._workspace: dict = {}
        super().__init__(
            _normalise_groups(params),
            {
                "kind": None,
                "lr": lr,
                "check_inputs": check_inputs,
                "chunk_size": chunk_size,
            },
        )

    @property
    def curvature_method(self) -> str | None:
        """The ``slstm.curvature`` method whose ``h`` the networks were trained on.

        None for the gradient-only LSTM. Pass it as ``method=`` to
        ``slstm.curvature.backward``: networks meta-trained on one estimator's
        diagonal see another's as inputs they were not trained for.
        """
        return self.config.curvature_method if "hessian" in self.config.inputs else None

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; a group without ``"kind"`` gets the kind its shapes imply.

        ``param_group["params"]`` contains tensors or ``(name, tensor)`` pairs; the
        base class moves the names of pairs to ``"param_names"``.
        """
        if not isinstance(param_group, dict):
            raise TypeError(
                f"a parameter group must be a dict with a 'params' key, got "
                f"{_describe(param_group)}"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        tensors = _param_tensors(
            params, f"parameter group {len(self.param_groups)}'s params"
        )
        kind = param_group.get("kind")
        if kind is None:
            guessed = set(infer_kinds_from_shapes(tensors))
            if len(guessed) != 1:
                raise ValueError(
                    f"a parameter group without 'kind' mixes kinds {sorted(guessed)}; "
                    f"split it with param_groups_by_kind(model) or give 'kind'"
                )
            kind = guessed.pop()
        if kind not in self.nets:
            raise ValueError(
                f"parameter group kind {kind!r} has no update network; expected one "
                f"of {sorted(self.nets)}"
            )
        lr = param_group.get("lr", self.defaults["lr"])
        if (
            isinstance(lr, bool)
            or not isinstance(lr, int | float)
            or not (math.isfinite(lr) and lr >= 0)
        ):
            raise ValueError(
                f"lr is a multiplier on the learned update and must be a finite "
                f"number >= 0 (1.0: as meta-trained), got {lr!r}"
            )
        super().add_param_group({**param_group, "params": params, "kind": kind})

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients and drop every ``p.hessian_diag``.

        Each curvature pass replaces ``p.hessian_diag`` rather than accumulating
        into it, so there is nothing to keep, and dropping it makes a step after a
        plain ``loss.backward()`` fail loudly instead of reusing stale curvature.
        """
        super().zero_grad(set_to_none=set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                if getattr(p, "hessian_diag", None) is not None:
                    p.hessian_diag = None
                if getattr(p, "hessian_method", None) is not None:
                    p.hessian_method = None

    def _check_curvature_method(self, entries) -> None:
        """Raise ValueError when ``slstm.curvature.backward`` computed an ``h``
        with another estimator than the networks were meta-trained on."""
        expected = self.config.curvature_method
        for _, p, name, _ in entries:
            method = getattr(p, "hessian_method", None)
            if method is not None and method != expected:
                raise ValueError(
                    f"the diagonal Hessian of {name} was computed with "
                    f"method={method!r}, but these networks were meta-trained on "
                    f"{expected!r}; call slstm.curvature.backward(..., "
                    f"method=optimizer.curvature_method)"
                )

    def reset_state(self) -> None:
        """Forget all recurrent state, so the next step starts a fresh run."""
        self.state.clear()

    def state_dict(self) -> dict:
        """Return torch's optimizer state dict plus the inputs of the networks
        whose LSTM state it contains, which ``load_state_dict`` checks."""
        state_dict = super().state_dict()
        state_dict["inputs"] = list(self.config.inputs)
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a ``state_dict()`` of an optimizer over a model of the same
        layout: the same kinds of groups and, per parameter, the same number of
        coordinates, which the saved LSTM state is shaped for.
        """
        # State dicts saved before "inputs" was recorded pass unchecked.
        inputs = state_dict.get("inputs")
        if inputs is not None and tuple(inputs) != tuple(self.config.inputs):
            raise ValueError(
                f"the state dict contains the LSTM state of networks that read "
                f"{tuple(inputs)}, but this optimizer's networks read "
                f"{tuple(self.config.inputs)}; load it into an optimizer of the "
                "same kind (lstm or slstm)"
            )
        saved = [group.get("kind") for group in state_dict["param_groups"]]
        current = [group["kind"] for group in self.param_groups]
        if saved != current:
            raise ValueError(
                f"the state dict has parameter groups of kinds {saved} but this "
                f"optimizer has {current}; build it with the same groups"
            )
        self._check_saved_state(state_dict)
        super().load_state_dict(state_dict)

    def _check_saved_state(self, state_dict: dict) -> None:
        """Raise ``ValueError`` unless each saved ``"hidden"`` and ``"cell"`` has
        the shape ``(num_layers, hidden_size, p.numel())`` of the parameter ``p``
        that the base class will hand it to (the one at the same position)."""
        fix = "load a state dict saved from an optimizer over the same model"
        saved_state = state_dict["state"]
        for group_index, (saved, group) in enumerate(
            zip(state_dict["param_groups"], self.param_groups, strict=True)
        ):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"group {group_index} ({group['kind']}) of the state dict has "
                    f"{len(saved['params'])} parameters but this optimizer's has "
                    f"{len(group['params'])}; {fix}"
                )
            net = self.nets[group["kind"]]
            for param_index, (key, p) in enumerate(
                zip(saved["params"], group["params"], strict=True)
            ):
                entry = saved_state.get(key)
                if entry is None:  # the parameter has taken no step yet
                    continue
                expected = (net.num_layers, net.hidden_size, p.numel())
                for part in ("hidden", "cell"):
                    tensor = entry.get(part)
                    if tensor is None:
                        raise ValueError(
                            f"state_dict['state'][{key!r}] has no {part!r} tensor, "
                            f"so a LearnedOptimizer did not save it; {fix}"
                        )
                    if tuple(tensor.shape) != expected:
                        raise ValueError(
                            f"state_dict['state'][{key!r}][{part!r}] has shape "
                            f"{tuple(tensor.shape)}, but it belongs to parameter "
                            f"{param_index} of group {group_index} "
                            f"({group['kind']}), which has shape "
                            f"{tuple(p.shape)} and needs state of shape "
                            f"{expected}; {fix}"
                        )

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one update to every parameter that has a gradient.

        ``closure``, if given, re-evaluates the model and sets the gradients (and
        for SLSTM the curvature); its return value is returned.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        entries = step_inputs(
            self.param_groups,
            hessian=self.config.needs_curvature,
            advice=LEARNED_ADVICE,
        )
        if self.config.needs_curvature:
            self._check_curvature_method(entries)
        # The networks' weights are fixed during a step, so each layer's fused
        # weight is built once here rather than once per block of coordinates.
        self._workspace["fused_weights"] = {}
        for group, p, name, hessian_diag in entries:
            net = self.nets[group["kind"]]
            state = self.state[p]
            dtype = net.readout.weight.dtype
            if not state:
                state["step"] = 0
                state["hidden"], state["cell"] = net.initial_state(
                    p.numel(), p.device, dtype
                )
            elif state["hidden"].dtype != dtype:  # load_state_dict casts to p.dtype
                state["hidden"] = state["hidden"].to(dtype)
                state["cell"] = state["cell"].to(dtype)
            self._update_in_place(net, group, p, name, hessian_diag, state)
            state["step"] += 1
        return loss

    def _update_in_place(self, net, group, p, name, hessian_diag, state):
        """Add the update to ``p`` and overwrite its state, a block of coordinates
        at a time.

        Coordinates are independent, so each block's new state depends only on
        its old state and can replace it at once. The temporary memory is then
        bounded by ``chunk_size`` instead of growing with ``p.numel()``.
        """
        size = group["chunk_size"] if p.is_contiguous() else p.numel()
        size = max(size, 1)
        flat_param = p.view(-1) if p.is_contiguous() else p
        flat_grad = p.grad.reshape(-1)
        flat_hessian = None if hessian_diag is None else hessian_diag.reshape(-1)
        hidden, cell = state["hidden"], state["cell"]
        # A state dict saved before groups had "lr" loads without it.
        multiplier = group.get("lr", 1.0)
        for start in range(0, p.numel(), size):
            block = slice(start, start + size)
            block_state = (hidden[:, :, block], cell[:, :, block])
            update, _ = compute_update(
                net,
                self.config,
                flat_grad[block],
                None if flat_hessian is None else flat_hessian[block],
                block_state,
                name=name,
                check_inputs=False,
                workspace=self._workspace,
            )
            # alpha=1 is exact, so the default leaves the update bit for bit.
            if flat_param is p:  # not contiguous: one block holds all of p
                p.add_(update.view_as(p), alpha=multiplier)
            else:
                flat_param[block].add_(update, alpha=multiplier)


EXPECTED_PARAMS = (
    "expected a model, or an iterable of tensors such as model.parameters(), of "
    "(name, tensor) pairs such as model.named_parameters(), or of parameter-group "
    "dicts"
)


def _describe(value) -> str:
    """Return a short repr of ``value`` with its type, for error messages."""
    return f"{reprlib.repr(value)} ({type(value).__name__})"


def _check_params_container(params) -> None:
    """Raise ``TypeError`` for a ``params`` argument that lists no parameters."""
    hint = ""
    if isinstance(params, torch.optim.Optimizer):
        got = f"an optimizer ({type(params).__name__})"
        hint = " Pass the parameters that optimizer was built with."
    elif isinstance(params, Mapping) and "params" in params:
        got = "a single parameter-group dict"
        hint = " Wrap it in a list: [group]."
    elif isinstance(params, Mapping):
        # A state_dict's tensors are detached, so they never receive gradients.
        got = (
            f"a mapping ({type(params).__name__}) with keys "
            f"{reprlib.repr(list(params))}, such as a state_dict"
        )
        hint = " Pass model.parameters() or model.named_parameters()."
    elif isinstance(params, str | bytes):
        got = f"the {type(params).__name__} {reprlib.repr(params)}"
    elif not isinstance(params, Iterable):
        got = _describe(params)
    else:
        return
    raise TypeError(f"params is {got}; {EXPECTED_PARAMS}.{hint}")


def _param_tensors(entries: list, where: str) -> list[torch.Tensor]:
    """Return the tensors of ``entries``, which are tensors or ``(name, tensor)``
    pairs; ``TypeError`` names the first entry that is neither."""
    tensors = []
    for index, entry in enumerate(entries):
        if isinstance(entry, torch.Tensor):
            tensors.append(entry)
        elif (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], torch.Tensor)
        ):
            tensors.append(entry[1])
        else:
            raise TypeError(
                f"entry {index} of {where} is {_describe(entry)}; expected a tensor "
                "or a (name, tensor) pair such as model.named_parameters() yields"
            )
    return tensors


def _normalise_groups(params) -> list[dict]:
    """Turn a model, groups, or a bare or named parameter list into groups."""
    if isinstance(params, nn.Module):
        return param_groups_by_kind(params)
    if isinstance(params, torch.Tensor):
        params = [params]
    _check_params_container(params)
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(entry, dict) for entry in params):
        return params
    if any(isinstance(entry, dict) for entry in params):
        raise TypeError("pass either parameter groups (dicts) or tensors, not both")
    return _group_bare_params(params)


def _group_bare_params(params: list) -> list[dict]:
    """Group tensors or ``(name, tensor)`` pairs by the kind their shapes imply."""
    tensors = _param_tensors(params, "params")
    named = sum(not isinstance(entry, torch.Tensor) for entry in params)
    if 0 < named < len(params):
        raise ValueError(
            f"params mixes {named} (name, tensor) pairs with "
            f"{len(params) - named} bare tensors; pass all of them named, as "
            "model.named_parameters() does, or none"
        )
    groups: dict[str, list] = {}
    for entry, kind in zip(params, infer_kinds_from_shapes(tensors), strict=True):
        groups.setdefault(kind, []).append(entry)
    return [{"params": members, "kind": kind} for kind, members in groups.items()]
