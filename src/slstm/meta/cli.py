"""``slstm meta-train``: meta-train an LSTM or SLSTM optimizer.

Examples::

    slstm meta-train --optimizer slstm --data fashion-mnist --net mnist_cnn \\
        --episodes 500 --out runs/slstm
    slstm meta-train --out runs/slstm --resume          # continue after a crash
    torchrun --nproc-per-node 4 -m slstm meta-train ... # one process per GPU/core
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from slstm.meta.config import (
    META_LOSSES,
    OPTIMIZER_KINDS,
    MetaTrainConfig,
    parse_horizon_schedule,
    parse_step_counts,
    saved_validation_seed,
)
from slstm.meta.config import parse_net_sizes as _parse_net_sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``slstm meta-train`` to ``parser``."""
    from slstm.data import add_data_arguments

    defaults = MetaTrainConfig()
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZER_KINDS,
        help="lstm reads the gradient; slstm also reads the diagonal Hessian "
        "(for the slstm-hutchinson optimizer, add --curvature-method hutchinson) "
        f"(default: {defaults.optimizer})",
    )
    add_data_arguments(parser)
    for action in parser._actions:
        if action.dest == "validation":
            # Meta-training validates by default, so it carves a split by default.
            action.help = (
                "training examples held out for validation: a count or a fraction "
                f"(default: {defaults.validation})"
            )

    task = parser.add_argument_group("tasks")
    task.add_argument(
        "--net",
        metavar="NAME[,NAME...]",
        help="optimizee network(s) from slstm.models; with several, each episode "
        f"draws one (default: {defaults.net})",
    )
    task.add_argument(
        "--net-sizes",
        type=_net_sizes,
        metavar="NAME=VALUE,...",
        help="network sizes, e.g. channels=16,hidden=32; VALUE may list choices "
        "drawn per episode, e.g. channels=8|16 (default: the network's own)",
    )
    task.add_argument(
        "--task-classes",
        type=int,
        metavar="K",
        help="each episode trains on a random subset of K classes (default: all)",
    )

    unroll = parser.add_argument_group("episodes and unrolling")
    unroll.add_argument(
        "--episodes",
        type=int,
        metavar="N",
        help=f"episodes per process (default: {defaults.episodes})",
    )
    unroll.add_argument(
        "--horizon",
        type=int,
        metavar="N",
        help="optimizee steps per episode, up to the first --horizon-schedule "
        f"entry if one is given (default: {defaults.horizon})",
    )
    unroll.add_argument(
        "--horizon-schedule",
        type=_horizon_schedule,
        metavar="E:N,...",
        help="a curriculum over horizons: from episode E (counted from 0) on, "
        "episodes have N steps, e.g. 20:200,60:400; before the first E they have "
        "--horizon steps",
    )
    unroll.add_argument(
        "--unroll",
        type=int,
        metavar="T",
        help=f"steps per truncation and meta-update (default: {defaults.unroll})",
    )
    unroll.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"optimizee minibatch size (default: {defaults.batch_size})",
    )
    unroll.add_argument(
        "--divergence-factor",
        type=float,
        metavar="FACTOR",
        help="end an episode when the loss exceeds this factor times its initial "
        f"value (default: {defaults.divergence_factor})",
    )

    meta = parser.add_argument_group("meta-optimizer")
    meta.add_argument(
        "--meta-lr",
        type=float,
        metavar="LR",
        help=f"Adam learning rate (default: {defaults.meta_lr})",
    )
    meta.add_argument(
        "--clip-norm",
        type=float,
        metavar="NORM",
        help="clip the meta-gradient's L2 norm to this "
        f"(default: {defaults.clip_norm})",
    )
    meta.add_argument(
        "--meta-loss",
        choices=META_LOSSES,
        help="sum: sum_t w_t L_t; log: sum_t w_t log L_t "
        f"(default: {defaults.meta_loss})",
    )
    meta.add_argument(
        "--recompute-updates",
        action="store_true",
        help="recompute the update networks' activations in the meta-backward "
        "instead of storing them: several times less memory per truncation, about "
        "one more update-network forward pass per step",
    )
    meta.add_argument(
        "--loss-weights",
        metavar="SPEC",
        help="w_t over a truncation: uniform, linear, last or T comma-separated "
        f"numbers (default: {defaults.loss_weights})",
    )

    learned = parser.add_argument_group("learned optimizer")
    learned.add_argument(
        "--curvature-method",
        metavar="METHOD",
        help="diagonal Hessian method of slstm.curvature "
        f"(default: {defaults.curvature_method})",
    )
    learned.add_argument(
        "--output-scale",
        type=float,
        metavar="SCALE",
        help=f"update = output_scale * LSTM output (default: {defaults.output_scale})",
    )
    learned.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start the update networks from this optimizer checkpoint (a file "
        "or a shipped name) instead of a fresh initialisation; --optimizer and "
        "the options of this group that are not given are taken from it",
    )
    learned.add_argument(
        "--hidden-size",
        type=int,
        metavar="N",
        help=f"LSTM hidden units per layer (default: {defaults.hidden_size})",
    )
    learned.add_argument(
        "--num-layers",
        type=int,
        metavar="N",
        help=f"LSTM layers (default: {defaults.num_layers})",
    )
    learned.add_argument(
        "--preprocess-p",
        type=float,
        metavar="P",
        help=f"exponent p of the log preprocessing (default: {defaults.preprocess_p})",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seed of the training tasks, minibatch order and update networks' "
        f"initialisation (default: {defaults.seed})",
    )
    run.add_argument(
        "--validation-seed",
        type=int,
        metavar="N",
        help="seed of the validation split and validation networks, kept apart "
        "from --seed so that every run holds out the same examples (default: the "
        f"--init checkpoint's run's, else {defaults.validation_seed})",
    )
    run.add_argument(
        "--out",
        metavar="DIR",
        help=f"output folder for configuration, metrics and checkpoints "
        f"(default: {defaults.out})",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        default=False,
        help="continue the run saved in --out (state/latest.pt); options not given "
        "are taken from its config.json",
    )
    run.add_argument(
        "--validate-every",
        type=int,
        metavar="K",
        help="validate every K episodes, 0 to disable "
        f"(default: {defaults.validate_every})",
    )
    run.add_argument(
        "--validation-tasks",
        type=int,
        metavar="N",
        help="fresh networks trained per validation "
        f"(default: {defaults.validation_tasks})",
    )
    run.add_argument(
        "--validation-horizon",
        type=_validation_horizon,
        metavar="N[,N...]",
        help="steps of each validation run (default: --horizon); with several "
        "increasing counts, e.g. 100,1000, each network is scored after each and "
        "best.pt is chosen by the mean loss",
    )
    run.add_argument(
        "--keep-validated",
        action="store_true",
        default=None,
        help="also save the update networks of every validation as "
        "validated/episode-NNNNNN.pt (about 50 KB each), to calibrate or compare "
        "checkpoints other than best.pt later",
    )
    run.add_argument(
        "--snapshot-every",
        type=int,
        metavar="N",
        help="also save the update networks every N episodes as "
        "snapshots/episode-NNNNNN.pt, without validating them, e.g. to average "
        "them with slstm average (default: 0, never)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="write state/latest.pt and last.pt every N episodes, and always at exit "
        f"(default: {defaults.checkpoint_every})",
    )
    run.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help=f"where to train (default: {defaults.device})",
    )
    run.add_argument(
        "--threads",
        dest="num_threads",
        type=int,
        metavar="N",
        help="torch CPU threads per process (default: torch's choice)",
    )
    run.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=True,
        help="hide the progress bar",
    )

    search = parser.add_argument_group("meta learning-rate search")
    search.add_argument(
        "--search",
        type=int,
        metavar="N",
        help="pick --meta-lr by N random-search trials first (default: no search)",
    )
    search.add_argument(
        "--search-low",
        type=float,
        metavar="LR",
        help=f"lowest meta learning rate tried (default: {defaults.search_low})",
    )
    search.add_argument(
        "--search-high",
        type=float,
        metavar="LR",
        help=f"highest meta learning rate tried (default: {defaults.search_high})",
    )
    search.add_argument(
        "--search-episodes",
        type=int,
        metavar="N",
        help=f"episodes per search trial (default: {defaults.search_episodes})",
    )
    search.add_argument(
        "--search-storage",
        metavar="URL",
        help="Optuna storage URL shared by several machines, e.g. "
        "postgresql://host/db (default: sqlite file in DIR/search)",
    )
    # Every option's default is None, so --resume can distinguish the options a
    # user set from the rest when it merges them with the saved configuration.
    parser.set_defaults(**{name: None for name in _config_fields()})


def _net_sizes(text: str) -> dict:
    try:
        return _parse_net_sizes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _horizon_schedule(text: str) -> list[list[int]] | None:
    try:
        return parse_horizon_schedule(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _validation_horizon(text: str) -> int | list[int]:
    try:
        counts = parse_step_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return counts[0] if len(counts) == 1 else counts


def _config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(MetaTrainConfig)]


def given_options(args: argparse.Namespace) -> dict:
    """Return the configuration options set on the command line (not None)."""
    return {
        name: getattr(args, name)
        for name in _config_fields()
        if getattr(args, name, None) is not None
    }


def config_from_args(args: argparse.Namespace) -> MetaTrainConfig:
    """Build the configuration: the saved one on --resume, then the options given."""
    given = given_options(args)
    if args.resume:
        out = Path(given.get("out", MetaTrainConfig.out))
        saved_path = out / "config.json"
        if not saved_path.exists():
            raise FileNotFoundError(
                f"--resume found no {saved_path}; point --out at the folder of an "
                "earlier run, or start without --resume"
            )
        saved = MetaTrainConfig.load(saved_path).to_dict()
        return MetaTrainConfig.from_dict({**saved, **given})
    if "validation" not in given:
        given["validation"] = MetaTrainConfig.validation
    if given.get("init"):
        init = Path(given["init"])
        if init.is_file():
            # Absolute, so that --resume from another directory names the same file.
            given["init"] = str(init.resolve())
        inherited = init_options(given["init"])
        requested = given.get("validation_seed")
        trained = inherited.get("validation_seed")
        if None not in (requested, trained) and requested != trained:
            logging.getLogger("slstm.meta").warning(
                "--validation-seed %d differs from the validation seed %d of the "
                "run that trained %s, so this run holds out other images than "
                "that run did and may meta-train on images it validated on",
                requested,
                trained,
                given["init"],
            )
        given = {**inherited, **given}
    return MetaTrainConfig.from_dict(given)


def init_options(checkpoint: str) -> dict:
    """Return the options that ``--init`` takes from the checkpoint it names.

    These are the learned optimizer's options and, when the checkpoint records
    the run that trained it, that run's validation seed, so that a continued
    run holds out the examples its starting point never trained on.
    """
    from slstm.meta.trainer import learned_optimizer_options
    from slstm.optim import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    options = learned_optimizer_options(loaded.config)
    saved = (loaded.provenance or {}).get("meta_train_config")
    validation_seed = saved_validation_seed(saved) if isinstance(saved, dict) else None
    if validation_seed is not None:
        options["validation_seed"] = validation_seed
    return options


def run(args: argparse.Namespace) -> int:
    """Run ``slstm meta-train``; a user error prints one line and returns 2."""
    from slstm.meta.distributed import launched_by_torchrun

    status = _run(args)
    if launched_by_torchrun():
        # NOTE: with torch 2.13, a gloo rank sometimes aborts while Python shuts
        # down ("terminate called without an active exception", SIGABRT), after
        # destroy_process_group and after every file is written. It was seen in
        # about 1 of 10 runs of 4 CPU ranks on 2 busy cores. Leaving without
        # interpreter finalization keeps the exit status the run earned.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(status)
    return status


def _run(args: argparse.Namespace) -> int:
    from slstm.meta.trainer import meta_train
    from slstm.utils import check_output_dir

    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
        if not args.resume and int(os.environ.get("RANK", "0")) == 0:
            # Before the data loads; rank 0 alone writes the folder.
            check_output_dir(config.out)
            if config.search and config.search_storage is not None:
                from slstm.meta.search import check_storage

                check_storage(config.search_storage)
    except (ValueError, FileNotFoundError) as error:
        print(f"slstm meta-train: {_in_option_words(str(error))}", file=sys.stderr)
        return 2
    try:
        result = meta_train(config, resume=args.resume, progress=args.progress)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"slstm meta-train: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted; continue with: slstm meta-train --out {config.out} --resume",
            file=sys.stderr,
        )
        return 130
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    lines = [
        f"meta-trained {config.optimizer} for {result.episodes} episodes "
        f"({result.meta_steps} meta-steps, {result.skipped} skipped, "
        f"{result.nonfinite} non-finite, {result.diverged} diverged episodes)",
        f"last checkpoint: {result.last_checkpoint}",
    ]
    if result.best_checkpoint is not None:
        lines.append(
            f"best checkpoint: {result.best_checkpoint} "
            f"(validation loss {result.best_validation_loss:.4f})"
        )
    if result.search_trials:
        lines.append(f"meta learning rate chosen by search: {result.meta_lr:.3g}")
    print("\n".join(lines))
    return 0


# Configuration fields whose command-line option is not --field-name.
_OPTION_NAMES = {"num_threads": "--threads"}


def _in_option_words(message: str) -> str:
    from slstm.utils import in_option_words

    return in_option_words(message, _config_fields(), _OPTION_NAMES)
