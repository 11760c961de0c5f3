"""Optimizers that read the gradient and a diagonal Hessian.

- ``DiagonalNewton``: ``theta <- theta - lr * g / d(h)`` with damped curvature.
- ``LearnedOptimizer``: the LSTM (gradient) and SLSTM (gradient and diagonal
  Hessian) optimizers, driven by meta-trained ``UpdateNet`` s.
- ``learned_update``: the same update as a differentiable function, for
  meta-training.
- ``OPTIMIZERS``: every optimizer of the experiments, by name.
"""

from slstm.optim.checkpoints import (
    Checkpoint,
    CheckpointError,
    average_checkpoints,
    load,
    load_checkpoint,
    save_checkpoint,
    shipped_checkpoints,
)
from slstm.optim.checks import NonFiniteInputError
from slstm.optim.config import (
    CURVATURE_METHODS,
    PARAMETER_KINDS,
    PRESETS,
    LearnedOptimizerConfig,
)
from slstm.optim.diagonal_newton import DAMPINGS, DiagonalNewton
from slstm.optim.features import (
    FEATURE_INPUTS,
    build_features,
    build_features_into,
    num_features,
    preprocess,
)
from slstm.optim.kinds import (
    infer_kinds_from_shapes,
    param_groups_by_kind,
    parameter_kinds,
)
from slstm.optim.learned import (
    LearnedOptimizer,
    compute_update,
    create_update_nets,
    detach_state,
    learned_update,
)
from slstm.optim.registry import OPTIMIZERS, OptimizerSpec, make_optimizer
from slstm.optim.update_net import CoordinatewiseLSTM, UpdateNet

__all__ = [
    "DAMPINGS",
    "DiagonalNewton",
    "OPTIMIZERS",
    "OptimizerSpec",
    "make_optimizer",
    "Checkpoint",
    "CheckpointError",
    "average_checkpoints",
    "load",
    "load_checkpoint",
    "save_checkpoint",
    "shipped_checkpoints",
    "CURVATURE_METHODS",
    "FEATURE_INPUTS",
    "PARAMETER_KINDS",
    "PRESETS",
    "CoordinatewiseLSTM",
    "LearnedOptimizer",
    "LearnedOptimizerConfig",
    "NonFiniteInputError",
    "UpdateNet",
    "build_features",
    "build_features_into",
    "compute_update",
    "create_update_nets",
    "detach_state",
    "infer_kinds_from_shapes",
    "learned_update",
    "num_features",
    "param_groups_by_kind",
    "parameter_kinds",
    "preprocess",
]
