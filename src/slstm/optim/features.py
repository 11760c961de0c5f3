"""Input features of the learned optimizers, built per coordinate.

Every input (the gradient ``g`` and, for SLSTM, the diagonal second derivative
``h``) is mapped to two numbers by the log-magnitude preprocessing of
Andrychowicz et al. (2016), so values spanning many orders of magnitude reach the
LSTM on a common scale:

    (log|x| / p, sign x)   if |x| >= e^-p
    (-1, e^p * x)          otherwise

``build_features`` is the one place that decides which inputs a configuration
feeds and in which column order; ``build_features_into`` writes the same numbers
feature-major into a caller's buffer, for the optimizer's allocation-free step.
``num_features`` derives the LSTM input size from the same list.
"""

import math

import torch

# Inputs a configuration may name, in the column order of the features.
FEATURE_INPUTS = ("grad", "hessian")
FEATURES_PER_INPUT = 2


def preprocess(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Map ``x`` (any shape) to log-magnitude features of shape ``(*x.shape, 2)``.

    Both components lie in [-1, 1] for ``|x| <= 1`` and grow only as ``log|x|`` for
    large ``|x|``. The first component is continuous at ``|x| = e^-p`` (both
    branches give -1). The function and its derivative are finite for every finite
    ``x``, including 0 and subnormal numbers. ``torch.where`` evaluates both
    branches, so the logarithm is given ``|x|`` where it is large enough and 1
    elsewhere.
    """
    if not p > 0:
        raise ValueError(f"preprocessing exponent p must be positive, got {p!r}")
    threshold = math.exp(-p)
    magnitude = x.abs()
    large = magnitude >= threshold
    safe_magnitude = torch.where(large, magnitude, torch.ones_like(magnitude))
    log_part = torch.where(
        large, torch.log(safe_magnitude) / p, torch.full_like(x, -1.0)
    )
    sign_part = torch.where(large, torch.sign(x), x * math.exp(p))
    return torch.stack((log_part, sign_part), dim=-1)


def num_features(config) -> int:
    """Return the LSTM input size for ``config.inputs``: two features per input."""
    return FEATURES_PER_INPUT * len(config.inputs)


def _inputs(grad, hessian_diag, config) -> list[torch.Tensor]:
    """Return the tensors ``config.inputs`` names, flattened, in column order."""
    values = []
    for name in config.inputs:
        if name == "grad":
            value = grad
        elif name == "hessian":
            if hessian_diag is None:
                raise ValueError(
                    "this learned optimizer reads the diagonal Hessian but none was "
                    "given; compute it with slstm.curvature.backward (or "
                    "functional_backward) before the update"
                )
            if hessian_diag.shape != grad.shape:
                raise ValueError(
                    f"hessian_diag has shape {tuple(hessian_diag.shape)} but the "
                    f"gradient has shape {tuple(grad.shape)}; they must match"
                )
            value = hessian_diag
        else:
            raise ValueError(
                f"unknown optimizer input {name!r}; expected one of {FEATURE_INPUTS}"
            )
        values.append(value.reshape(-1))
    return values


def build_features(
    grad: torch.Tensor, hessian_diag: torch.Tensor | None, config
) -> torch.Tensor:
    """Build the ``(N, num_features(config))`` input of the update network.

    ``grad`` and ``hessian_diag`` have the shape of one parameter tensor with ``N``
    elements. They are flattened, so row ``i`` of the result belongs to element
    ``i`` of the flattened parameter. ``hessian_diag`` is read only when
    ``"hessian"`` is among ``config.inputs``.
    """
    columns = [
        preprocess(value, config.preprocess_p)
        for value in _inputs(grad, hessian_diag, config)
    ]
    return torch.cat(columns, dim=-1)


@torch.no_grad()
def build_features_into(
    out: torch.Tensor, grad: torch.Tensor, hessian_diag: torch.Tensor | None, config
) -> torch.Tensor:
    """Write ``build_features(grad, hessian_diag, config).t()`` into ``out``.

    ``out`` is a contiguous ``(num_features(config), N)`` tensor of the inputs'
    dtype; it is returned. For every non-NaN input the numbers are bitwise those
    of ``build_features`` (a NaN input gives ``(NaN, 0)`` here and ``(-1, NaN)``
    there). They are computed with a handful of in-place operations per input
    instead of the stack, concatenation and transposed copy, which matters when
    the optimizer runs this on many blocks of coordinates per step. No autograd.
    """
    values = _inputs(grad, hessian_diag, config)
    expected = (num_features(config), grad.numel())
    if tuple(out.shape) != expected or not out.is_contiguous():
        raise ValueError(
            f"out must be a contiguous tensor of shape {expected}, got shape "
            f"{tuple(out.shape)}; allocate it with torch.empty{expected}"
        )
    for value in values:
        if value.dtype != out.dtype:
            raise ValueError(
                f"out has dtype {out.dtype} but an input has dtype {value.dtype}; "
                "use one dtype, or build_features(...).to(dtype) for mixed ones"
            )
    p = config.preprocess_p
    threshold, scale = math.exp(-p), math.exp(p)
    for index, x in enumerate(values):
        log_row = out[FEATURES_PER_INPUT * index]
        sign_row = out[FEATURES_PER_INPUT * index + 1]
        magnitude = torch.abs(x, out=log_row)
        small = magnitude < threshold
        # log(0) = -inf here is overwritten by the fill, like preprocess's where.
        magnitude.log_().div_(p).masked_fill_(small, -1.0)
        torch.where(small, x * scale, torch.sign(x), out=sign_row)
    return out
