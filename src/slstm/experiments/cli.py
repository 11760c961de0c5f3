"""``slstm experiment PRESET``: compare the optimizers on a preset."""

import argparse
import dataclasses
import math
import sys

from slstm.curvature import METHODS as CURVATURE_METHODS

from .presets import (
    BASELINES,
    LR_SEARCH_RANGES,
    OPTIMIZER_NAMES,
    PRESETS,
    SCALES,
    STUDIES,
)
from .runner import DEFAULT_LR_MULTIPLIERS, ExperimentConfig


def add_arguments(parser):
    """Add the options of ``slstm experiment`` to ``parser``."""
    from slstm.data import DATASETS

    defaults = ExperimentConfig()
    parser.add_argument(
        "preset",
        choices=list(PRESETS),
        help="; ".join(f"{name}: {p.description}" for name, p in PRESETS.items()),
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default=defaults.scale,
        help="small: narrow network, smaller minibatch and evaluation subsets for a "
        "CPU; full: the published sizes; auto (default): full on CUDA, small otherwise",
    )
    parser.add_argument(
        "--data",
        choices=list(DATASETS),
        default=None,
        metavar="NAME",
        help=f"data set replacing the preset's: {', '.join(DATASETS)}",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="directory of the data set's files (default: the data set's own place)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PIXELS",
        help="imagenet preset: side of the square crop (default: 64)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory (default: a new folder under runs/)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=defaults.steps,
        help=f"update steps per run (default: {defaults.steps})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=defaults.seeds,
        help=f"number of seeds (default: {defaults.seeds})",
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        metavar="SEED",
        default=defaults.first_seed,
        help=f"first seed (default: {defaults.first_seed})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        default=None,
        help="minibatch size (default: 64 at small scale, 128 at full)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="steps between evaluations of the training-subset loss and the test "
        "error (default: 10 at small scale, 5 at full)",
    )
    sizes = parser.add_argument_group("sizes (default: the scale's)")
    sizes.add_argument(
        "--net-sizes",
        "--model-sizes",
        dest="model_sizes",
        type=_model_sizes,
        default=None,
        metavar="NAME=VALUE,...",
        help="network sizes as in `slstm train`, e.g. channels=32,hidden=64 "
        "(--model-sizes is the older name)",
    )
    sizes.add_argument(
        "--validation-size",
        type=int,
        default=None,
        metavar="N",
        help="training images held out to tune the baselines' learning rates",
    )
    sizes.add_argument(
        "--train-eval-size",
        type=int,
        default=None,
        metavar="N",
        help="size of the fixed training subset whose loss is logged",
    )
    sizes.add_argument(
        "--test-eval-size",
        type=int,
        default=None,
        metavar="N",
        help="test images scored for the test error; 0 scores all of them",
    )
    parser.add_argument(
        "--device",
        default=defaults.device,
        help="auto (default: CUDA when present), cpu or cuda",
    )
    parser.add_argument(
        "--optimizers",
        type=_name_list(OPTIMIZER_NAMES),
        default=OPTIMIZER_NAMES,
        metavar="LIST",
        help=f"comma-separated optimizers (default: {','.join(OPTIMIZER_NAMES)})",
    )

    learned = parser.add_argument_group("learned optimizers")
    learned.add_argument(
        "--lstm-checkpoint",
        default=None,
        metavar="NAME|PATH",
        help="LSTM checkpoint (default: the shipped lstm-fashion-mnist)",
    )
    learned.add_argument(
        "--slstm-checkpoint",
        default=None,
        metavar="NAME|PATH",
        help="SLSTM checkpoint (default: the shipped slstm-fashion-mnist)",
    )
    learned.add_argument(
        "--slstm-hutchinson-checkpoint",
        default=None,
        metavar="NAME|PATH",
        help="checkpoint of the SLSTM variant fed Hutchinson's diagonal, "
        "meta-trained with --curvature-method hutchinson (default: the shipped "
        "slstm-hutchinson-fashion-mnist)",
    )
    learned.add_argument(
        "--meta-train",
        action="store_true",
        help="meta-train the learned optimizers first, with the code of "
        "`slstm meta-train`, "
        "instead of loading checkpoints (the transfer preset always does)",
    )
    learned.add_argument(
        "--meta-episodes",
        type=int,
        metavar="N",
        default=None,
        help="meta-training episodes per optimizer (default: 100)",
    )
    learned.add_argument(
        "--meta-horizon",
        type=int,
        default=None,
        metavar="STEPS",
        help="optimizee steps per meta-training episode (default: 100)",
    )
    learned.add_argument(
        "--meta-config",
        default=None,
        metavar="FILE",
        help="JSON file of `slstm meta-train` options (e.g. the config.json of an "
        "earlier run) that --meta-train starts from instead of the preset's task",
    )

    tuning = parser.add_argument_group("learning rates of the baselines")
    tuning.add_argument(
        "--tune-trials",
        type=int,
        default=None,
        metavar="N",
        help="random-search trials per baseline, scored by the validation loss "
        "(default: 8 at small scale, 10 at full; 0: registry defaults, untuned)",
    )
    tuning.add_argument(
        "--lr",
        type=_learning_rate,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"fix a baseline's learning rate instead of tuning it; NAME in "
        f"{', '.join(BASELINES)}; repeatable",
    )
    tuning.add_argument(
        "--lr-range",
        type=_learning_rate_range,
        action="append",
        default=[],
        metavar="NAME=LOW:HIGH",
        help="log-uniform search range of a baseline's learning rate, e.g. "
        "diagonal-newton=1e-5:1e-2 (default: "
        + ", ".join(f"{n}={lo:g}:{hi:g}" for n, (lo, hi) in LR_SEARCH_RANGES.items())
        + "); repeatable",
    )
    tuning.add_argument(
        "--curvature-method",
        default=defaults.curvature_method,
        choices=CURVATURE_METHODS,
        help="diagonal Hessian of DiagonalNewton (default: becker-lecun)",
    )

    studies = parser.add_argument_group("extra studies")
    studies.add_argument(
        "--studies",
        type=_name_list(STUDIES, allow_none=True),
        default=STUDIES,
        metavar="LIST",
        help=f"comma-separated studies to run after the comparison, or none "
        f"(default: {','.join(STUDIES)})",
    )
    studies.add_argument(
        "--study-seeds",
        type=int,
        default=None,
        metavar="N",
        help="seeds of the learning-rate sensitivity study, the first N of the "
        "comparison's (default: 2 at small scale, 3 at full)",
    )
    studies.add_argument(
        "--horizon-seeds",
        type=int,
        default=None,
        metavar="N",
        help="seeds of the horizon study, the first N of the comparison's "
        "(default: all of them)",
    )
    studies.add_argument(
        "--lr-multipliers",
        type=_float_list,
        default=DEFAULT_LR_MULTIPLIERS,
        metavar="LIST",
        help="factors on each optimizer's learning rate (learned optimizers: on "
        f"their output) (default: {_join_floats(DEFAULT_LR_MULTIPLIERS)})",
    )
    studies.add_argument(
        "--horizon-factor",
        type=int,
        default=defaults.horizon_factor,
        metavar="K",
        help="the horizon study runs K times the meta-training horizon "
        f"(default: {defaults.horizon_factor})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: 1 at small scale, torch's choice at full)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (status lines remain)"
    )


def config_from_args(args):
    """Return the ``ExperimentConfig`` of parsed ``slstm experiment`` options."""
    return ExperimentConfig(
        preset=args.preset,
        scale=args.scale,
        data=args.data,
        data_dir=args.data_dir,
        out=args.out,
        steps=args.steps,
        seeds=args.seeds,
        first_seed=args.first_seed,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        device=args.device,
        optimizers=tuple(args.optimizers),
        lstm_checkpoint=args.lstm_checkpoint,
        slstm_checkpoint=args.slstm_checkpoint,
        slstm_hutchinson_checkpoint=args.slstm_hutchinson_checkpoint,
        meta_train=args.meta_train,
        meta_episodes=args.meta_episodes,
        meta_horizon=args.meta_horizon,
        meta_config=args.meta_config,
        tune_trials=args.tune_trials,
        learning_rates=dict(args.lr),
        lr_ranges=dict(args.lr_range),
        curvature_method=args.curvature_method,
        studies=tuple(args.studies),
        study_seeds=args.study_seeds,
        horizon_seeds=args.horizon_seeds,
        lr_multipliers=tuple(args.lr_multipliers),
        horizon_factor=args.horizon_factor,
        image_size=args.image_size,
        threads=args.threads,
        model_sizes=args.model_sizes,
        validation_size=args.validation_size,
        train_eval_size=args.train_eval_size,
        test_eval_size=args.test_eval_size,
    )


def run(args):
    """Run ``slstm experiment`` and return the exit status."""
    from slstm.utils import command_line, in_option_words

    from .runner import run_experiment

    config = config_from_args(args)
    try:
        config.validate()
        run_experiment(config, progress=not args.quiet, command=command_line())
    except (ValueError, OSError) as error:
        # The project's errors (DataError, CheckpointError, UnsupportedModelError)
        # are ValueErrors whose message names the value and the fix, so the
        # message alone is clearer than a traceback.
        message = in_option_words(str(error), _CONFIG_FIELDS, _OPTION_NAMES)
        print(f"slstm experiment: {message}", file=sys.stderr)
        return 2
    return 0


_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(ExperimentConfig))
# Configuration fields whose command-line option is not --field-name.
_OPTION_NAMES = {
    "model_sizes": "--net-sizes",
    "learning_rates": "--lr",
    "lr_ranges": "--lr-range",
    "meta_config": "--meta-config",
}


def _name_list(choices, allow_none=False):
    def parse(text):
        if allow_none and text.strip() == "none":
            return ()
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            extra = " or none" if allow_none else ""
            raise argparse.ArgumentTypeError(
                f"invalid list {text!r}; use comma-separated names from "
                f"{', '.join(choices)}{extra}"
            )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(
                f"{text!r} names {', '.join(repeated)} more than once; name each once"
            )
        return names

    return parse


def _learning_rate(text):
    name, sep, value = text.partition("=")
    try:
        lr = float(value)
    except ValueError:
        lr = None
    if lr is None or not sep or name not in BASELINES or not lr > 0:
        raise argparse.ArgumentTypeError(
            f"invalid --lr {text!r}; write NAME=VALUE with NAME in "
            f"{', '.join(BASELINES)} and VALUE > 0, e.g. adam=0.003"
        )
    return name, lr


def _learning_rate_range(text):
    name, sep, bounds = text.partition("=")
    low_text, colon, high_text = bounds.partition(":")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        low = high = None
    if (
        low is None
        or not sep
        or not colon
        or name not in BASELINES
        or not 0 < low < high < math.inf
    ):
        raise argparse.ArgumentTypeError(
            f"invalid --lr-range {text!r}; write NAME=LOW:HIGH with NAME in "
            f"{', '.join(BASELINES)} and 0 < LOW < HIGH, e.g. "
            "diagonal-newton=1e-5:1e-2"
        )
    return name, (low, high)


def _float_list(text):
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"invalid list {text!r}; write positive numbers separated by commas, "
            "e.g. 0.1,0.3,1,3,10"
        )
    return values


def _join_floats(values):
    return ",".join(f"{value:g}" for value in values)


def _model_sizes(text):
    sizes = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"invalid --net-sizes {text!r}; write NAME=VALUE pairs with integer "
                "values, separated by commas, e.g. channels=32,hidden=64"
            )
        sizes[key.strip()] = int(value)
    return sizes
