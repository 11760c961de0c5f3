"""``MaxPool2d``, ``AvgPool2d`` and ``AdaptiveAvgPool2d``."""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from slstm.curvature.rules.base import BackwardContext, ModuleRule, ParamDerivatives


class MaxPool2dRule(ModuleRule):
    """Routes ``g`` and ``H`` to the entry each window selected.

    An input that is the maximum of several overlapping windows receives the sum
    of their contributions. Ties go to the single index that
    ``max_pool2d_with_indices`` chooses, the same one autograd uses.
    """

    def check(self) -> None:
        module = self.module
        if module.return_indices:
            raise self.unsupported(
                "return_indices=True makes the module return a tuple",
                "use return_indices=False inside the model",
            )
        stride = module.stride if module.stride is not None else module.kernel_size
        self.options = (
            _pair(module.kernel_size),
            _pair(stride),
            _pair(module.padding),
            _pair(module.dilation),
            bool(module.ceil_mode),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Stand in for the module's forward, to get the indices from the same
        pooling pass instead of a second one."""
        self.require_dims(x, 4, "(N, C, H, W)")
        output, indices = torch.ops.aten.max_pool2d_with_indices(x, *self.options)
        self.indices = indices.flatten(2)
        return output

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        self.require_dims(x, 4, "(N, C, H, W)")
        if getattr(self, "indices", None) is None:  # the module's own forward ran
            _, indices = torch.ops.aten.max_pool2d_with_indices(
                x.detach(), *self.options
            )
            self.indices = indices.flatten(2)
        # The indices (int64, one per output) take half the memory of the input
        # for 2x2 windows, and let the input be freed after the forward pass.
        self.indices = self.indices.detach()
        self.input_shape = x.shape

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        if not ctx.need_input:
            return None, None, {}
        return self._route(g_out), self._route(h_out), {}

    def _route(self, grad: Tensor) -> Tensor:
        n, c, height, width = self.input_shape
        routed = grad.new_zeros(n, c, height * width)
        # scatter_add_, not a scatter: overlapping windows add up.
        routed.scatter_add_(2, self.indices, grad.flatten(2))
        return routed.view(self.input_shape)


class AvgPool2dRule(ModuleRule):
    """Spreads ``g_out / c`` and ``H_out / c²`` over each window.

    The divisor ``c`` differs per window under ``ceil_mode`` or
    ``count_include_pad=False``; it is read off by pooling a plane of ones.
    """

    def check(self) -> None:
        module = self.module
        stride = module.stride if module.stride is not None else module.kernel_size
        self.options = (
            _pair(module.kernel_size),
            _pair(stride),
            _pair(module.padding),
            bool(module.ceil_mode),
            bool(module.count_include_pad),
            module.divisor_override,
        )

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        self.require_dims(x, 4, "(N, C, H, W)")
        self.x = x.detach()

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        if not ctx.need_input:
            return None, None, {}
        x = self.x
        spread = torch.ops.aten.avg_pool2d_backward
        reciprocal = _avg_pool_reciprocal_divisors(
            x.shape[-2:], self.options, x.dtype, x.device
        )
        g_in = spread(g_out, x, *self.options)
        h_in = spread(h_out * reciprocal, x, *self.options)
        return g_in, h_in, {}


@functools.lru_cache(maxsize=64)
def _avg_pool_reciprocal_divisors(
    size: torch.Size, options: tuple, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Return ``1 / c`` per window, shaped ``(H_out, W_out)``."""
    kernel, stride, padding, ceil_mode, count_include_pad, divisor = options
    ones = torch.ones(1, 1, *size, dtype=dtype, device=device)
    # Sum pooling counts the input entries in each window; average pooling gives
    # that count divided by c.
    counts = F.avg_pool2d(ones, kernel, stride, padding, ceil_mode, True, 1)
    means = F.avg_pool2d(
        ones, kernel, stride, padding, ceil_mode, count_include_pad, divisor
    )
    return (means / counts.clamp(min=1))[0, 0]


class AdaptiveAvgPool2dRule(ModuleRule):
    """Like ``AvgPool2d`` with window ``i`` spanning
    ``[floor(i H / H_out), ceil((i + 1) H / H_out))`` in each dimension."""

    def post_forward(self, x: Tensor, y: Tensor) -> None:
        self.require_dims(x, 4, "(N, C, H, W)")
        self.x = x.detach()
        self.output_size = tuple(y.shape[-2:])

    def backward(
        self, g_out: Tensor, h_out: Tensor, ctx: BackwardContext
    ) -> tuple[Tensor | None, Tensor | None, ParamDerivatives]:
        if not ctx.need_input:
            return None, None, {}
        x = self.x
        spread = torch.ops.aten._adaptive_avg_pool2d_backward
        reciprocal = _adaptive_reciprocal_areas(
            tuple(x.shape[-2:]), self.output_size, x.dtype, x.device
        )
        return spread(g_out, x), spread(h_out * reciprocal, x), {}


@functools.lru_cache(maxsize=64)
def _adaptive_reciprocal_areas(
    size: tuple[int, int], output_size: tuple[int, int], dtype, device
) -> Tensor:
    lengths = []
    for length, out_length in zip(size, output_size, strict=True):
        index = torch.arange(out_length)
        start = torch.div(index * length, out_length, rounding_mode="floor")
        end = -torch.div(-(index + 1) * length, out_length, rounding_mode="floor")
        lengths.append((end - start).to(dtype))
    areas = lengths[0][:, None] * lengths[1][None, :]
    return (1 / areas).to(device)
