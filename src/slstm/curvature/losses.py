"""The start of the backward pass: ``g`` and the exact ``H`` at the model output.

For softmax cross-entropy on logits ``z`` with target weights ``a`` (one row of
non-negative coefficients per sample), the per-sample loss is
``-Σ_c a_c log p_c`` with ``p = softmax(z)``, so, with ``A = Σ_c a_c``,

    g_z = (A p - a) / D,    H_z = A p (1 - p) / D,

where ``A p (1 - p)`` is the diagonal of ``A (diag(p) - p pᵀ)`` and ``D`` is the
normaliser of the reduction. For mean squared error over ``M`` elements,
``g = 2 (y - t) / M`` and ``H = 2 / M`` (``M = 1`` for sum).

Reduction ``"none"`` is treated as the sum of the per-element losses.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slstm.curvature.errors import UnsupportedModelError

SUPPORTED_LOSSES = ("CrossEntropyLoss", "MSELoss")
REDUCTIONS = ("mean", "sum", "none")


def check_loss(loss_fn: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` unless the engine supports ``loss_fn``."""
    if type(loss_fn) not in (nn.CrossEntropyLoss, nn.MSELoss):
        raise UnsupportedModelError(
            f"loss {type(loss_fn).__name__} is not supported by the one-pass "
            f"engine; supported losses: {', '.join(SUPPORTED_LOSSES)}; use "
            "method='hutchinson' or 'exact' for other losses"
        )
    if loss_fn.reduction not in REDUCTIONS:
        raise UnsupportedModelError(
            f"{type(loss_fn).__name__}(reduction={loss_fn.reduction!r}) is "
            f"invalid; use one of {', '.join(REDUCTIONS)}"
        )


def output_derivatives(
    loss_fn: nn.Module, output: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Return ``(g, H)`` at ``output`` (both shaped like it) for ``loss_fn``.

    ``output`` and ``targets`` are detached tensors.
    """
    if type(loss_fn) is nn.CrossEntropyLoss:
        return _cross_entropy(loss_fn, output, targets)
    return _mean_squared_error(loss_fn, output, targets)


def _cross_entropy(
    loss_fn: nn.CrossEntropyLoss, logits: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    if logits.dim() < 2:
        raise UnsupportedModelError(
            f"CrossEntropyLoss: expected logits of shape (N, C) or (N, C, d1, ...), "
            f"got shape {tuple(logits.shape)}; add the batch dimension"
        )
    classes = logits.shape[1]
    smoothing = loss_fn.label_smoothing
    # Per-class weights shaped to broadcast along the class dimension (dim 1).
    class_shape = (1, classes) + (1,) * (logits.dim() - 2)
    weight = loss_fn.weight
    if weight is not None:
        weight = weight.to(logits.dtype).view(class_shape)

    if targets.is_floating_point():
        # Class probabilities; torch divides the mean by the number of positions.
        if targets.shape != logits.shape:
            raise ValueError(
                f"CrossEntropyLoss: probability targets of shape "
                f"{tuple(targets.shape)} do not match logits of shape "
                f"{tuple(logits.shape)}"
            )
        coefficients = targets.to(logits.dtype)
        if smoothing > 0:
            coefficients = coefficients * (1 - smoothing) + smoothing / classes
        if weight is not None:
            coefficients = coefficients * weight
        normaliser = logits.numel() // classes
    else:
        valid = targets != loss_fn.ignore_index
        safe_targets = torch.where(valid, targets, 0)
        one_hot = F.one_hot(safe_targets, classes).movedim(-1, 1).to(logits.dtype)
        valid = valid.unsqueeze(1).to(logits.dtype)
        if weight is None:
            target_weight = valid  # (N, 1, d1, ...)
            smooth = valid / classes
        else:
            target_weight = (one_hot * weight).sum(1, keepdim=True) * valid
            smooth = weight * valid / classes
        coefficients = (1 - smoothing) * target_weight * one_hot + smoothing * smooth
        normaliser = target_weight.sum()

    probabilities = torch.softmax(logits, dim=1)
    total = coefficients.sum(1, keepdim=True)
    g = total * probabilities - coefficients
    h = total * probabilities * (1 - probabilities)
    if loss_fn.reduction == "mean":
        g = g / normaliser
        h = h / normaliser
    return g, h


def _mean_squared_error(
    loss_fn: nn.MSELoss, output: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    if targets.shape != output.shape:
        raise ValueError(
            f"MSELoss: targets of shape {tuple(targets.shape)} do not match the "
            f"output of shape {tuple(output.shape)}; reshape the targets (the "
            "engine does not broadcast them)"
        )
    scale = 2.0 / output.numel() if loss_fn.reduction == "mean" else 2.0
    g = scale * (output - targets.to(output.dtype))
    h = torch.full_like(output, scale)
    return g, h
