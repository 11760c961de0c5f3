"""Meta-training of the learned optimizers.

- :func:`meta_train` with a :class:`MetaTrainConfig` runs ``slstm meta-train``:
  episodes of truncated back-propagation through CNN training, validation,
  resumable checkpoints, ``torch.distributed`` data parallelism.
- :mod:`slstm.meta.tasks`: the reproducible task sampler.
- :mod:`slstm.meta.unroll`: one truncation and its meta-loss.
- :func:`tune_learning_rate`: random search of learning rates with Optuna.
- :mod:`slstm.meta.joint`: one network trained while its optimizer is
  meta-learned along the same run (``slstm train --joint``).
"""

from slstm.meta.config import MetaTrainConfig
from slstm.meta.search import TuningResult, search_meta_lr, tune_learning_rate
from slstm.meta.tasks import Task, TaskSampler
from slstm.meta.trainer import MetaTrainer, MetaTrainResult, meta_train
from slstm.meta.unroll import Optimizee, TruncationResult, unroll_truncation

__all__ = [
    "MetaTrainConfig",
    "MetaTrainResult",
    "MetaTrainer",
    "Optimizee",
    "Task",
    "TaskSampler",
    "TruncationResult",
    "TuningResult",
    "meta_train",
    "search_meta_lr",
    "tune_learning_rate",
    "unroll_truncation",
]
