"""Modules that only move entries: ``Flatten``, ``Unflatten``, ``Identity`` and
``Dropout`` (a mask fixed by the forward pass)."""

import torch
from torch import Tensor

from slstm.curvature.rules.base import BackwardContext, ModuleRule, ParamDerivatives


class ReshapeRule(ModuleRule):
    """``Flatten`` and ``Unflatten``: ``g`` and ``H`` are reshaped back."""

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        self.input_shape = x.shape

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        if not ctx.need_input:
            return None, None, {}
        return g_out.reshape(self.input_shape), h_out.reshape(self.input_shape), {}


class IdentityRule(ModuleRule):
    """``Identity``, and ``Dropout`` in eval mode: ``g`` and ``H`` pass through."""

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        pass

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        if not ctx.need_input:
            return None, None, {}
        return g_out, h_out, {}


class DropoutRule(ModuleRule):
    """``Dropout``: ``y = x ∘ m`` with ``m`` zero or ``1 / (1 - p)``.

    In training mode the module does not expose its mask, and the input alone
    cannot recover it where ``x`` is zero. So the rule replaces the module's
    output by ``x ∘ m`` with a mask it draws itself, from the same distribution
    (and from ``generator`` when the engine was given one). Then
    ``g_in = g_out ∘ m`` and ``H_in = H_out ∘ m²``.
    """

    generator: torch.Generator | None = None

    def pre_forward(self, x: Tensor) -> None:
        # An in-place dropout overwrites x; keep the values the mask applies to.
        self.x = x.clone() if self.module.inplace else x

    def post_forward(self, x: Tensor, y: Tensor) -> Tensor | None:
        self.mask = None
        if not self.module.training or self.module.p == 0:
            return None
        p = self.module.p
        if p == 1:
            self.mask = torch.zeros_like(x.detach())
        else:
            keep = torch.empty_like(x.detach())
            keep.bernoulli_(1 - p, generator=self.generator)
            self.mask = keep / (1 - p)
        return self.x * self.mask

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        if not ctx.need_input:
            return None, None, {}
        if self.mask is None:
            return g_out, h_out, {}
        return g_out * self.mask, h_out * self.mask.square(), {}
