"""Gradients and a diagonal Hessian for every parameter, in one backward pass.

>>> loss = backward(model, nn.CrossEntropyLoss(), inputs, targets)
>>> model[0].weight.grad, model[0].weight.hessian_diag

:func:`backward` sets ``p.grad`` and ``p.hessian_diag``; :func:`functional_backward`
takes the parameters as tensors and returns them in a :class:`CurvatureResult`.
"""

from slstm.curvature.engine import (
    EXACT_MAX_PARAMETERS,
    METHODS,
    CurvatureResult,
    backward,
    functional_backward,
)
from slstm.curvature.errors import UnsupportedModelError

__all__ = [
    "EXACT_MAX_PARAMETERS",
    "METHODS",
    "CurvatureResult",
    "UnsupportedModelError",
    "backward",
    "functional_backward",
]
