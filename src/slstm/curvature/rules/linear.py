"""``nn.Linear``: ``y = x Wᵀ + b``."""

from torch import Tensor

from slstm.curvature.rules.base import (
    BackwardContext,
    ModuleRule,
    ParamDerivatives,
    detached_param,
)


class LinearRule(ModuleRule):
    """Exact for its own weights given an exact ``H_out``: each weight feeds one
    output per sample, so no cross terms are dropped.

    ``g_in = g_out W``, ``H_in = H_out (W ∘ W)``,
    ``h_W[j, i] = Σ_n H_out[n, j] x[n, i]²``, ``h_b = Σ_n H_out[n]``, where ``n``
    runs over the batch and any extra leading dimensions of ``x``.
    """

    param_names = ("weight", "bias")

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        self.x = x.detach()
        self.weight = detached_param(self.module, "weight")
        self.has_bias = self.module.bias is not None

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        derivatives: ParamDerivatives = {}
        rows_g = g_out.reshape(-1, g_out.shape[-1])  # (rows, out_features)
        rows_h = h_out.reshape(-1, h_out.shape[-1])
        if "weight" in ctx.params:
            rows_x = self.x.reshape(-1, self.x.shape[-1])  # (rows, in_features)
            derivatives["weight"] = (rows_g.T @ rows_x, rows_h.T @ rows_x.square())
        if "bias" in ctx.params and self.has_bias:
            derivatives["bias"] = (rows_g.sum(0), rows_h.sum(0))
        if not ctx.need_input:
            return None, None, derivatives
        return g_out @ self.weight, h_out @ self.weight.square(), derivatives
