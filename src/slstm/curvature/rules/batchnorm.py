"""``nn.BatchNorm2d`` in eval mode: a per-channel affine map."""

import torch
from torch import Tensor

from slstm.curvature.rules.base import (
    BackwardContext,
    ModuleRule,
    ParamDerivatives,
    detached_param,
)


class BatchNorm2dRule(ModuleRule):
    """``y = γ (x - μ) / sqrt(σ² + ε) + β`` with the running statistics.

    With ``a = γ / sqrt(σ² + ε)`` per channel: ``g_in = a g_out``,
    ``H_in = a² H_out``, ``h_γ = Σ H_out x̂²`` and ``h_β = Σ H_out`` over batch and
    pixels (``x̂`` the normalised input). Like a conv bias, ``γ`` and ``β`` feed
    every pixel of a channel, so their diagonals drop cross-pixel terms.

    Training mode normalises with batch statistics, which couple the samples; the
    rule rejects it.
    """

    param_names = ("weight", "bias")

    def check(self) -> None:
        module = self.module
        if module.training:
            raise self.unsupported(
                "BatchNorm2d in training mode normalises with batch statistics, "
                "which couple the samples",
                "call .eval() on the module, or use method='hutchinson' or 'exact'",
            )
        if module.running_mean is None or module.running_var is None:
            raise self.unsupported(
                "track_running_stats=False uses batch statistics even in eval mode",
                "use track_running_stats=True, or method='hutchinson' or 'exact'",
            )

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        self.require_dims(x, 4, "(N, C, H, W)")
        module = self.module
        shape = (1, -1, 1, 1)
        self.x = x.detach()
        self.mean = module.running_mean.to(x.dtype).view(shape)
        self.inv_std = torch.rsqrt(module.running_var.to(x.dtype) + module.eps).view(
            shape
        )
        self.weight = detached_param(module, "weight")

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        derivatives: ParamDerivatives = {}
        if self.weight is not None and "weight" in ctx.params:
            normalised = (self.x - self.mean) * self.inv_std
            derivatives["weight"] = (
                (g_out * normalised).sum((0, 2, 3)),
                (h_out * normalised.square()).sum((0, 2, 3)),
            )
        if self.weight is not None and "bias" in ctx.params:
            derivatives["bias"] = (g_out.sum((0, 2, 3)), h_out.sum((0, 2, 3)))
        if not ctx.need_input:
            return None, None, derivatives
        scale = self.inv_std
        if self.weight is not None:
            scale = scale * self.weight.view(1, -1, 1, 1)
        return g_out * scale, h_out * scale.square(), derivatives
