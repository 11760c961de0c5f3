"""Diagonal Hessians from autograd: Hutchinson's estimator and the exact diagonal.

Both take gradients built with ``create_graph=True`` and differentiate them again,
so they work on any twice-differentiable model.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

# Largest block of vectors (entries) pushed through one batched Hessian-vector
# product.
_BLOCK_ENTRIES = 1 << 22
_MAX_BLOCK_VECTORS = 256


def hutchinson_diagonal(
    grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    samples: int,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Return ``mean_s v_s ∘ (H v_s)`` over ``samples`` Rademacher vectors ``v_s``.

    Unbiased for ``diag(H)`` because ``E[v vᵀ] = I``; each ``v`` covers all
    parameters at once, so a sample costs one Hessian-vector product. Samples are
    pushed through autograd in blocks with ``is_grads_batched``.
    """
    active = [
        i for i, grad in enumerate(grads) if grad is not None and grad.requires_grad
    ]
    estimates = [
        torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params
    ]
    total = sum(params[i].numel() for i in active)
    block = max(1, min(samples, _MAX_BLOCK_VECTORS, _BLOCK_ENTRIES // max(total, 1)))
    for start in range(0, samples, block):
        count = min(block, samples - start)
        vectors = [
            _rademacher((count, *params[i].shape), params[i], generator) for i in active
        ]
        products = torch.autograd.grad(
            [grads[i] for i in active],
            [params[i] for i in active],
            vectors if count > 1 else [v[0] for v in vectors],
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=count > 1,
        )
        for i, vector, product in zip(active, vectors, products, strict=True):
            if product is not None:
                product = product.detach().view(count, *params[i].shape)
                estimates[i].add_((vector * product).sum(0))
    return [estimate / samples for estimate in estimates]


def exact_diagonal(
    grads: Sequence[Tensor | None], params: Sequence[Tensor]
) -> list[Tensor]:
    """Return the exact ``diag(d²L/dθ²)`` of each parameter tensor.

    Row ``i`` of the Hessian block of one tensor is the gradient of ``g_i``; the
    rows are taken in blocks of one-hot vectors with ``is_grads_batched``.
    """
    diagonals = []
    for grad, param in zip(grads, params, strict=True):
        diagonal = torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
        if grad is not None and grad.requires_grad:
            numel = param.numel()
            block = max(1, min(numel, _BLOCK_ENTRIES // numel))
            for start in range(0, numel, block):
                index = torch.arange(
                    start, min(start + block, numel), device=param.device
                )
                one_hot = torch.zeros(
                    len(index), numel, dtype=param.dtype, device=param.device
                )
                one_hot[torch.arange(len(index)), index] = 1
                (rows,) = torch.autograd.grad(
                    grad,
                    param,
                    one_hot.view(len(index), *param.shape),
                    retain_graph=True,
                    is_grads_batched=True,
                    allow_unused=True,
                    materialize_grads=True,
                )
                diagonal[index] = rows.reshape(len(index), numel)[
                    torch.arange(len(index)), index
                ].detach()
        diagonals.append(diagonal.view(param.shape))
    return diagonals


def _rademacher(
    shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None
) -> Tensor:
    bits = torch.randint(
        0, 2, shape, generator=generator, device=like.device, dtype=like.dtype
    )
    return bits * 2 - 1
