"""``nn.Conv2d`` with any stride, dilation, groups, padding and ``padding_mode``."""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from slstm.curvature.rules.base import (
    BackwardContext,
    ModuleRule,
    ParamDerivatives,
    detached_param,
)

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class Conv2dRule(ModuleRule):
    """Transposed convolutions of ``g_out`` with ``W`` and of ``H_out`` with ``W ∘ W``.

    ``h_W`` is the weight-gradient convolution of ``x ∘ x`` with ``H_out`` and
    ``h_b = Σ_{n, pixels} H_out``. These drop the cross-pixel terms of the output
    Hessian, so the weight and bias diagonals are approximate unless ``H_out`` is
    exactly diagonal (e.g. a conv layer followed by ``Flatten`` and MSE).

    Padding other than symmetric zeros (``padding="same"`` with an even dilated
    kernel, ``padding_mode`` reflect, replicate or circular) is a separate step:
    the input is padded explicitly and convolved without padding. Padding copies
    entries, so ``g`` and ``H`` flow back through it as sums over the copies.

    NOTE: for ``H`` this treats the padding as its own step and drops the cross
    terms between an entry and its copy when one kernel window reads both, so
    near the border ``H_in`` of a reflect- or replicate-padded conv is
    approximate even for an exact, diagonal ``H_out``. ``g`` and the parameter
    diagonals are unaffected.
    """

    param_names = ("weight", "bias")

    def check(self) -> None:
        module = self.module
        if module.padding_mode not in PADDING_MODES:
            raise self.unsupported(
                f"padding_mode={module.padding_mode!r} is invalid",
                f"use one of {', '.join(PADDING_MODES)}",
            )
        # (left, right, top, bottom) in F.pad order.
        if module.padding == "valid":
            pads = (0, 0, 0, 0)
        elif module.padding == "same":
            pads = ()
            for dilation, kernel in zip(
                reversed(module.dilation), reversed(module.kernel_size), strict=True
            ):
                total = dilation * (kernel - 1)
                pads += (total // 2, total - total // 2)
        else:
            pad_h, pad_w = module.padding
            pads = (pad_w, pad_w, pad_h, pad_h)
        symmetric = pads[0] == pads[1] and pads[2] == pads[3]
        if module.padding_mode == "zeros" and symmetric:
            self.explicit_pads = None
            self.conv_padding = [pads[2], pads[0]]
        else:
            self.explicit_pads = pads
            self.conv_padding = [0, 0]
            self.pad_mode = (
                "constant" if module.padding_mode == "zeros" else module.padding_mode
            )

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        self.require_dims(x, 4, "(N, C, H, W)")
        self.x = x.detach()
        self.weight = detached_param(self.module, "weight")
        self.has_bias = self.module.bias is not None

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        x = self.x
        if self.explicit_pads is not None:
            x = F.pad(x, self.explicit_pads, mode=self.pad_mode)
        want_weight = "weight" in ctx.params
        want_bias = "bias" in ctx.params and self.has_bias

        g_in, g_weight, g_bias = self._convolution_backward(
            g_out, x, self.weight, (ctx.need_input, want_weight, want_bias)
        )
        h_in = h_weight = None
        if ctx.need_input or want_weight:
            # x ∘ x only matters for h_W; skip squaring when only H_in is wanted.
            squared_x = x.square() if want_weight else x
            h_in, h_weight, _ = self._convolution_backward(
                h_out,
                squared_x,
                self.weight.square(),
                (ctx.need_input, want_weight, False),
            )

        derivatives: ParamDerivatives = {}
        if want_weight:
            derivatives["weight"] = (g_weight, h_weight)
        if want_bias:
            derivatives["bias"] = (g_bias, h_out.sum((0, 2, 3)))
        if not ctx.need_input:
            return None, None, derivatives
        if self.explicit_pads is not None:
            g_in = self._unpad(g_in)
            h_in = self._unpad(h_in)
        return g_in, h_in, derivatives

    def _convolution_backward(
        self, grad: Tensor, x: Tensor, weight: Tensor, mask: tuple[bool, bool, bool]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        module = self.module
        return torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]] if mask[2] else None,
            list(module.stride),
            self.conv_padding,
            list(module.dilation),
            False,
            [0, 0],
            module.groups,
            list(mask),
        )

    def _unpad(self, padded: Tensor) -> Tensor:
        """Sum each padded entry back onto the input entry it copies."""
        n, c, height, width = self.x.shape
        source = _padding_sources(
            height, width, self.explicit_pads, self.pad_mode, padded.device
        )
        copied = source >= 0
        result = padded.new_zeros(n, c, height * width)
        result.index_add_(2, source[copied], padded.reshape(n, c, -1)[:, :, copied])
        return result.view(n, c, height, width)


@functools.lru_cache(maxsize=64)
def _padding_sources(
    height: int, width: int, pads: tuple[int, ...], mode: str, device: torch.device
) -> Tensor:
    """Return, for each entry of the padded plane (flattened), the flat index of
    the input entry it copies, or -1 for a zero."""
    index = torch.arange(height * width, dtype=torch.float64, device=device)
    index = index.view(1, 1, height, width)
    if mode == "constant":
        padded = F.pad(index, pads, mode="constant", value=-1.0)
    else:
        padded = F.pad(index, pads, mode=mode)
    return padded.flatten().long()
