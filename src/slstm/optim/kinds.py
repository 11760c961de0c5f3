"""Assign each trainable parameter the kind of update network that serves it."""

from collections.abc import Iterable

import torch
from torch import nn

from slstm.optim.config import PARAMETER_KINDS

# Module types whose weights and biases belong to each kind.
KIND_MODULES = {
    "conv": (nn.modules.conv._ConvNd,),
    "fc": (nn.Linear,),
}


def _module_kind(module: nn.Module) -> str | None:
    for kind, types in KIND_MODULES.items():
        if isinstance(module, types):
            return kind
    return None


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """Return ``{name: kind}`` for every trainable parameter of ``model``.

    Names are those of ``model.named_parameters()``. Weights and biases of
    convolutions are ``"conv"``, those of ``nn.Linear`` are ``"fc"``. A trainable
    parameter owned by any other module raises ``ValueError``, because no update
    network is trained for it.
    """
    kinds = {}
    seen = set()
    for module_name, module in model.named_modules():
        own = [
            (name, p)
            for name, p in module.named_parameters(recurse=False)
            if p.requires_grad
        ]
        if not own:
            continue
        kind = _module_kind(module)
        if kind is None:
            path = module_name or "<root>"
            raise ValueError(
                f"module {path!r} ({type(module).__name__}) has trainable parameters "
                f"of no known kind; learned optimizers serve parameters of "
                f"convolutions (kind 'conv') and nn.Linear (kind 'fc'). Freeze them, "
                f"or pass parameter groups with an explicit 'kind' in "
                f"{PARAMETER_KINDS}"
            )
        for name, p in own:
            if id(p) in seen:  # a tied parameter keeps its first owner's kind
                continue
            seen.add(id(p))
            full_name = f"{module_name}.{name}" if module_name else name
            kinds[full_name] = kind
    return kinds


def param_groups_by_kind(model: nn.Module) -> list[dict]:
    """Return ``[{"params": [...], "kind": kind}, ...]`` for ``model``'s parameters.

    One group per kind present, in order of first appearance; pass the result to
    ``LearnedOptimizer`` or to any ``torch.optim`` optimizer (which ignores the
    extra key).
    """
    parameters = dict(model.named_parameters())
    groups: dict[str, list[torch.Tensor]] = {}
    for name, kind in parameter_kinds(model).items():
        groups.setdefault(kind, []).append(parameters[name])
    return [{"params": params, "kind": kind} for kind, params in groups.items()]


def infer_kinds_from_shapes(params: Iterable[torch.Tensor]) -> list[str]:
    """Guess the kind of each tensor of a bare parameter list such as
    ``model.parameters()``.

    A 3-, 4- or 5-dimensional tensor is a convolution weight, a 2-dimensional one
    a fully connected weight, and a 1-dimensional tensor (a bias) takes the kind of
    the tensor before it, as ``nn.Module.parameters()`` lists each module's weight
    before its bias. Use ``param_groups_by_kind(model)`` where the model is at
    hand: it reads the module types instead of guessing.
    """
    kinds = []
    for index, p in enumerate(params):
        if p.dim() in (3, 4, 5):
            kinds.append("conv")
        elif p.dim() == 2:
            kinds.append("fc")
        elif p.dim() <= 1 and kinds:
            kinds.append(kinds[-1])
        else:
            raise ValueError(
                f"cannot tell the kind of parameter {index} (shape "
                f"{tuple(p.shape)}) from its shape; pass the model, "
                f"param_groups_by_kind(model), or groups with an explicit 'kind' in "
                f"{PARAMETER_KINDS}"
            )
    return kinds
