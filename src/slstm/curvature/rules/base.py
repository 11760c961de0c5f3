"""The interface shared by the per-module backward rules."""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from slstm.curvature.errors import UnsupportedModelError


@dataclass
class BackwardContext:
    """Settings of one rule's backward step.

    Attributes:
        need_input: whether ``g`` and ``H`` at the module's input are needed (False
            for the first module that owns requested parameters and every module
            before it).
        second_order: whether to keep the ``σ''(x) g_y`` terms (False for the
            Gauss-Newton variant).
        params: local names (``"weight"``, ``"bias"``) of the module's parameters
            whose gradient and diagonal are requested.
    """

    need_input: bool
    second_order: bool
    params: frozenset[str] = field(default_factory=frozenset)


ParamDerivatives = dict[str, tuple[Tensor, Tensor]]


class ModuleRule:
    """Propagates ``(g_out, H_out)`` at a module's output to its input.

    One instance is created per module and per engine call. The engine calls
    :meth:`pre_forward` and :meth:`post_forward` from forward hooks, so a rule
    saves (detached) exactly the tensors its backward step needs, then calls
    :meth:`backward` once, last module first.

    ``g_out`` and ``H_out`` have the shape of the module's output, batch
    dimension included: ``g_out`` is ``dL/dy`` and ``H_out`` the approximate
    ``diag(d²L/dy²)`` of the summed (or averaged) loss, per sample.
    """

    #: Parameters the rule can differentiate, by local name.
    param_names: tuple[str, ...] = ()

    def __init__(self, module: nn.Module, path: str):
        self.module = module
        self.path = path

    def check(self) -> None:
        """Raise :class:`UnsupportedModelError` for options the rule cannot handle."""

    #: A rule may define ``forward(x) -> Tensor``; the engine then runs it in
    #: place of the module's own forward (same result) while recording.
    forward = None

    def pre_forward(self, x: Tensor) -> None:
        """Save what must be read before the module runs (inputs it overwrites)."""

    def post_forward(self, x: Tensor, y: Tensor) -> Tensor | None:
        """Save what the backward step needs; return a replacement output or None."""
        raise NotImplementedError

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        """Return ``(g_in, H_in, {name: (g, h)})``; the input terms are None
        when ``ctx.need_input`` is False."""
        raise NotImplementedError

    # Helpers for subclasses.

    def describe(self) -> str:
        """Return ``"'path' (ClassName)"`` for error messages."""
        path = self.path or "<model>"
        return f"module {path!r} ({type(self.module).__name__})"

    def unsupported(self, reason: str, fix: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.describe()}: {reason}; {fix}")

    def require_dims(self, x: Tensor, dims: int, layout: str) -> None:
        if x.dim() != dims:
            raise self.unsupported(
                f"expected a batched input of shape {layout}, got shape "
                f"{tuple(x.shape)}",
                "add the batch dimension (x.unsqueeze(0) for a single sample)",
            )


def detached_param(module: nn.Module, name: str) -> Tensor | None:
    """Return ``module.<name>`` detached, or None when absent.

    Read during the forward pass, so under ``torch.func.functional_call`` this is
    the substituted tensor, not the module's own parameter.
    """
    value = getattr(module, name, None)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} of {type(module).__name__} is not a tensor")
    return value.detach()
