"""Learned optimizers that read the gradient and a diagonal Hessian.

Subpackages, in the order data flows through them:

- ``slstm.data``: readers for MNIST-format, CIFAR-10, image-folder and digits data.
- ``slstm.models``: the CNNs of the experiments.
- ``slstm.curvature``: one backward pass for gradients and the diagonal Hessian.
- ``slstm.optim``: the diagonal Newton baseline and the learned LSTM/SLSTM optimizers.
- ``slstm.meta``: meta-training of the learned optimizers.
- ``slstm.experiments``: the comparison runs, their records and plots.
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("curvature", "data", "experiments", "meta", "models", "optim")


def __getattr__(name):
    # Import subpackages on first use so `import slstm` and `slstm --help` stay fast.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"slstm.{name}")
    raise AttributeError(f"module 'slstm' has no attribute {name!r}")
