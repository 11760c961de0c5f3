"""Preset experiments: which data, which network and how large, at two scales.

``full`` is the published setting (three convolutions with 64 feature maps,
minibatches of 128, every test image), meant for a GPU. ``small`` shrinks the
network, the minibatch and the evaluation subsets so that the default
Fashion-MNIST comparison finishes in about a quarter of an hour on a 2-core CPU.
"""

from dataclasses import dataclass, field

import torch

SCALES = ("auto", "small", "full")

# Every optimizer of the comparison, in table order. Names follow the
# slstm.optim.OPTIMIZERS registry. "slstm" is the paper's SLSTM, fed the
# Becker-LeCun diagonal; "slstm-hutchinson" is a named variant fed Hutchinson's.
OPTIMIZER_NAMES = (
    "sgd",
    "rmsprop",
    "adam",
    "diagonal-newton",
    "lstm",
    "slstm",
    "slstm-hutchinson",
)
BASELINES = ("sgd", "rmsprop", "adam", "diagonal-newton")
LEARNED = ("lstm", "slstm", "slstm-hutchinson")
DISPLAY_NAMES = {
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "diagonal-newton": "DiagonalNewton",
    "lstm": "LSTM",
    "slstm": "SLSTM",
    "slstm-hutchinson": "SLSTM-Hutchinson",
}
# Options of `slstm meta-train` for each learned optimizer of the comparison:
# its --optimizer and the options that set a variant apart.
META_TRAIN_OPTIONS = {
    "lstm": {"optimizer": "lstm"},
    "slstm": {"optimizer": "slstm", "curvature_method": "becker-lecun"},
    "slstm-hutchinson": {"optimizer": "slstm", "curvature_method": "hutchinson"},
}

# Log-uniform learning-rate search ranges for the baselines. The learned
# optimizers have no learning rate to tune: their step size is part of what
# meta-training learns. DiagonalNewton divides by the curvature, so its steps are
# larger for the same rate: on the MNIST CNN, rates above 1e-2 diverged.
LR_SEARCH_RANGES = {
    "sgd": (1e-3, 1.0),
    "rmsprop": (1e-4, 1e-1),
    "adam": (1e-4, 1e-1),
    "diagonal-newton": (1e-5, 1e-2),
}

STUDIES = ("lr-sensitivity", "horizon")


@dataclass(frozen=True)
class ScaleSettings:
    """Sizes of one preset at one scale.

    Attributes:
        model_sizes: keyword arguments for ``slstm.models.build_model``.
        batch_size: minibatch size of every training step.
        train_eval_size: size of the fixed training subset whose loss is logged.
        test_eval_size: test images scored for the test error; None scores all.
        validation_size: images held out of the training split to tune the
            baselines' learning rates.
        tune_trials: random-search trials per baseline.
        study_seeds: seeds of the learning-rate sensitivity study.
        eval_every: steps between evaluations.
        threads: torch CPU threads, or None for torch's default.
    """

    model_sizes: dict = field(default_factory=dict)
    batch_size: int = 128
    train_eval_size: int = 10_000
    test_eval_size: int | None = None
    validation_size: int = 5_000
    tune_trials: int = 10
    study_seeds: int = 3
    eval_every: int = 5
    threads: int | None = None


@dataclass(frozen=True)
class MetaTrainSettings:
    """Meta-training task of a preset, used by ``--meta-train``.

    Attributes:
        model: network of the meta-training tasks (a ``slstm.models.MODELS`` name).
        model_sizes: its size keyword arguments at the small scale.
        classes: classes of the meta-training tasks (None: all of them).
        episodes: meta-training episodes per optimizer unless ``--meta-episodes``
            is given.
    """

    model: str
    model_sizes: dict = field(default_factory=dict)
    classes: int | None = None
    episodes: int = 100


@dataclass(frozen=True)
class Preset:
    """One experiment: data set, network, scales and learned-optimizer source.

    Attributes:
        name: the name given to ``slstm experiment``.
        description: one line for ``--help`` and the summary.
        data: ``slstm.data.load_dataset`` name.
        model: ``slstm.models.MODELS`` name of the network trained in the comparison.
        small, full: sizes at the two scales.
        meta_train: what ``--meta-train`` trains on.
        requires_meta_train: the preset is defined by its own meta-training, so
            shipped checkpoints are not used unless given explicitly.
        image_size: side of the square images of streaming image folders.
    """

    name: str
    description: str
    data: str
    model: str
    small: ScaleSettings
    full: ScaleSettings
    meta_train: MetaTrainSettings
    requires_meta_train: bool = False
    image_size: int = 64

    def settings(self, scale):
        """Return the ``ScaleSettings`` of ``scale`` ("small" or "full")."""
        if scale not in ("small", "full"):
            raise ValueError(
                f"scale {scale!r} has no settings; use 'small' or 'full' "
                "(resolve 'auto' with resolve_scale first)"
            )
        return self.small if scale == "small" else self.full


def resolve_scale(scale, device):
    """Return ``(scale, reason)`` with ``"auto"`` replaced by ``small`` or ``full``.

    ``auto`` picks ``full`` on a CUDA device and ``small`` otherwise, because the
    full networks take hours per comparison on a few CPU cores.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale != "auto":
        return scale, f"--scale {scale} was requested"
    if torch.device(device).type == "cuda":
        return "full", "--scale auto on a CUDA device runs the published sizes"
    return "small", (
        f"--scale auto on device {torch.device(device).type!r} shrinks the network "
        "and the evaluation subsets; use --scale full for the published sizes"
    )


# Evaluations cost more than training at this size (a forward pass over 2,024
# images against 64 forward and backward passes per step), hence every 10 steps.
# One thread: a 16-map network's tensors gain little from intra-op threads, and
# on a loaded 2-core machine two threads made a training step 4 to 8 times
# slower than one (bench/experiment_budget.py notes in docs/benchmarks.md).
_MNIST_SMALL = ScaleSettings(
    model_sizes={"channels": 16},
    batch_size=64,
    train_eval_size=1_024,
    test_eval_size=1_000,
    validation_size=2_000,
    tune_trials=8,
    study_seeds=2,
    eval_every=10,
    threads=1,
)
_MNIST_FULL = ScaleSettings(model_sizes={"channels": 64}, batch_size=128)

_CIFAR_SMALL = ScaleSettings(
    model_sizes={"channels": 16},
    batch_size=64,
    train_eval_size=1_024,
    test_eval_size=1_000,
    validation_size=2_000,
    tune_trials=8,
    study_seeds=2,
    eval_every=10,
    threads=1,
)
_CIFAR_FULL = ScaleSettings(batch_size=128)

PRESETS = {
    "fashion-mnist": Preset(
        name="fashion-mnist",
        description=(
            "Fashion-MNIST, mnist_cnn (three convolutions, two hidden linear layers)"
        ),
        data="fashion-mnist",
        model="mnist_cnn",
        small=_MNIST_SMALL,
        full=_MNIST_FULL,
        meta_train=MetaTrainSettings(model="mnist_cnn", model_sizes={"channels": 16}),
    ),
    "mnist": Preset(
        name="mnist",
        description=(
            "MNIST digits, mnist_cnn (three convolutions, two hidden linear layers)"
        ),
        data="mnist",
        model="mnist_cnn",
        small=_MNIST_SMALL,
        full=_MNIST_FULL,
        meta_train=MetaTrainSettings(model="mnist_cnn", model_sizes={"channels": 16}),
    ),
    "cifar10": Preset(
        name="cifar10",
        description="CIFAR-10, cifar_cnn",
        data="cifar10",
        model="cifar_cnn",
        small=_CIFAR_SMALL,
        full=_CIFAR_FULL,
        meta_train=MetaTrainSettings(model="cifar_cnn", model_sizes={"channels": 16}),
    ),
    "imagenet": Preset(
        name="imagenet",
        description="an ImageNet-style image folder (--data-dir), imagenet_cnn",
        data="imagefolder",
        model="imagenet_cnn",
        small=ScaleSettings(
            model_sizes={"channels": (16, 32, 64, 64, 64), "hidden": 256},
            batch_size=32,
            train_eval_size=512,
            test_eval_size=1_000,
            validation_size=1_000,
            tune_trials=6,
            study_seeds=2,
            eval_every=10,
            threads=1,
        ),
        full=ScaleSettings(batch_size=128, train_eval_size=5_000),
        meta_train=MetaTrainSettings(
            model="imagenet_cnn",
            model_sizes={"channels": (16, 32, 64, 64, 64), "hidden": 256},
        ),
    ),
    "transfer": Preset(
        name="transfer",
        description=(
            "meta-train on small_cnn with 5 classes, then train the data set's "
            "full network on all 10 classes"
        ),
        data="fashion-mnist",
        model="mnist_cnn",
        small=_MNIST_SMALL,
        full=_MNIST_FULL,
        meta_train=MetaTrainSettings(model="small_cnn", classes=5),
        requires_meta_train=True,
    ),
}

# The transfer preset trains the network that belongs to the data set.
TRANSFER_MODELS = {
    "fashion-mnist": "mnist_cnn",
    "mnist": "mnist_cnn",
    "cifar10": "cifar_cnn",
}


def get_preset(name):
    """Return the preset called ``name`` or raise ``ValueError`` listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None


def preset_data(preset: str) -> str | None:
    """Return the data set that ``preset`` uses unless ``--data`` replaces it
    (None for an unknown preset)."""
    return PRESETS[preset].data if preset in PRESETS else None
