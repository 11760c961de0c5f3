"""Elementwise activations ``y = σ(x)``.

``g_in = σ'(x) g_out`` and ``H_in = σ'(x)² H_out + σ''(x) g_out``; both are exact
given an exact ``H_out`` because each output depends on one input. The
Gauss-Newton variant drops ``σ''(x) g_out``.

The derivative conventions at kinks match autograd's: ReLU and LeakyReLU use
``x > 0``, ELU uses ``x <= 0`` for its exponential branch, Softplus switches to
the identity where ``β x > threshold``.
"""

import math

import torch
from torch import Tensor

from slstm.curvature.rules.base import BackwardContext, ModuleRule, ParamDerivatives


class ElementwiseRule(ModuleRule):
    """Base for activations; subclasses return ``(σ', σ'')`` from saved tensors.

    ``σ''`` may be None where it is zero everywhere (piecewise-linear units).
    """

    def pre_forward(self, x: Tensor) -> None:
        # An in-place activation overwrites its input before the forward hook runs.
        if getattr(self.module, "inplace", False) and self.reads_input():
            self.x = x.detach().clone()

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        if self.reads_input():
            if not getattr(self.module, "inplace", False):
                self.x = x.detach()
        else:
            self.y = y.detach()

    def reads_input(self) -> bool:
        """Return whether the derivatives are read from the input, not the output."""
        return True

    def derivatives(self) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        if not ctx.need_input:
            return None, None, {}
        first, second = self.derivatives()
        # The engine owns g_out and h_out and never reads them again: update in
        # place to save two activation-sized buffers.
        h_in = h_out.mul_(first.square())
        if ctx.second_order and second is not None:
            h_in.addcmul_(second, g_out)
        return g_out.mul_(first), h_in, {}


class ReLURule(ElementwiseRule):
    def pre_forward(self, x: Tensor) -> None:
        pass

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        # A one-byte mask instead of the output, which the next module may free.
        # As uint8, not bool: multiplying by it is several times faster on CPU
        # than masked_fill_ or a bool multiply (torch 2.13).
        self.active = (y.detach() > 0).view(torch.uint8)

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        if not ctx.need_input:
            return None, None, {}
        # σ' is 0 or 1, so σ'² = σ' and σ'' = 0.
        return g_out.mul_(self.active), h_out.mul_(self.active), {}


class LeakyReLURule(ElementwiseRule):
    def reads_input(self) -> bool:
        # With a positive slope, y > 0 exactly where x > 0.
        return self.module.negative_slope <= 0

    def derivatives(self) -> tuple[Tensor, Tensor | None]:
        saved = self.x if self.reads_input() else self.y
        slope = self.module.negative_slope
        return (saved > 0).to(saved.dtype) * (1 - slope) + slope, None


class SigmoidRule(ElementwiseRule):
    def reads_input(self) -> bool:
        return False

    def derivatives(self) -> tuple[Tensor, Tensor | None]:
        s = self.y
        first = s * (1 - s)
        return first, first * (1 - 2 * s)


class TanhRule(ElementwiseRule):
    def reads_input(self) -> bool:
        return False

    def derivatives(self) -> tuple[Tensor, Tensor | None]:
        t = self.y
        first = 1 - t.square()
        return first, -2 * t * first


class ELURule(ElementwiseRule):
    def reads_input(self) -> bool:
        # For alpha > 0, y > 0 exactly where x > 0 and alpha e^x = y + alpha.
        return self.module.alpha <= 0

    def derivatives(self) -> tuple[Tensor, Tensor | None]:
        alpha = self.module.alpha
        if self.reads_input():
            exp_branch = alpha * torch.exp(self.x)
            negative = self.x <= 0
        else:
            exp_branch = self.y + alpha
            negative = self.y <= 0
        first = torch.where(negative, exp_branch, 1.0)
        second = torch.where(negative, exp_branch, 0.0)
        return first, second


class GELURule(ElementwiseRule):
    def check(self) -> None:
        if self.module.approximate not in ("none", "tanh"):
            raise self.unsupported(
                f"approximate={self.module.approximate!r} is invalid",
                "use approximate='none' or 'tanh'",
            )

    def derivatives(self) -> tuple[Tensor, Tensor | None]:
        x = self.x
        if self.module.approximate == "none":
            # y = x Φ(x): y' = Φ + x φ, y'' = φ (2 - x²).
            pdf = torch.exp(-0.5 * x.square()) / math.sqrt(2 * math.pi)
            cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
            return cdf + x * pdf, pdf * (2 - x.square())
        # y = x (1 + tanh u) / 2 with u = c (x + k x³).
        c, k = math.sqrt(2 / math.pi), 0.044715
        t = torch.tanh(c * (x + k * x.pow(3)))
        sech2 = 1 - t.square()
        du = c * (1 + 3 * k * x.square())
        d2u = c * 6 * k * x
        first = 0.5 * (1 + t) + 0.5 * x * sech2 * du
        second = sech2 * (du + 0.5 * x * (d2u - 2 * t * du.square()))
        return first, second


class SiLURule(ElementwiseRule):
    def derivatives(self) -> tuple[Tensor, Tensor | None]:
        # y = x s(x): y' = s (1 + x (1 - s)), y'' = s (1 - s) (2 + x (1 - 2 s)).
        x = self.x
        s = torch.sigmoid(x)
        first = s * (1 + x * (1 - s))
        second = s * (1 - s) * (2 + x * (1 - 2 * s))
        return first, second


class SoftplusRule(ElementwiseRule):
    def derivatives(self) -> tuple[Tensor, Tensor | None]:
        # y = log(1 + e^{βx}) / β: y' = s(βx), y'' = β s (1 - s); linear above the
        # threshold, as in torch.
        beta, threshold = self.module.beta, self.module.threshold
        scaled = self.x * beta
        s = torch.sigmoid(scaled)
        linear = scaled > threshold
        first = torch.where(linear, 1.0, s)
        second = torch.where(linear, 0.0, beta * s * (1 - s))
        return first, second
