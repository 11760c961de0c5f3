"""Score a torch.optim baseline on the validation networks of a meta-training run.

Usage: python scripts/score_baseline.py RUN/config.json --optimizer adam \
    --lr 0.0078 --horizons 100,1000 [--validation-tasks N] [--threads N] \
    [--data-dir DIR] [--device auto|cpu|cuda]

The networks, minibatches and scores are those that `slstm meta-train`
validates with and `slstm calibrate` scores, so the printed losses sit beside a
learned optimizer's. Nothing is meta-trained, and the test split is never read.
"""

import argparse
import math
import sys

from slstm.meta.calibrate import add_data_and_device_arguments, score_baseline
from slstm.meta.config import MetaTrainConfig, parse_step_counts


def _step_counts(text: str) -> list[int]:
    try:
        return parse_step_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config.json of a meta-training run")
    parser.add_argument(
        "--optimizer", default="adam", help="sgd, rmsprop or adam (default: adam)"
    )
    parser.add_argument("--lr", type=float, required=True, help="learning rate")
    parser.add_argument(
        "--horizons",
        type=_step_counts,
        help="step counts after which each network is scored, e.g. 100,1000 "
        "(default: the run's validation horizons)",
    )
    parser.add_argument(
        "--validation-tasks",
        type=int,
        help="validation networks to train (default: the run's count)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: the run's)"
    )
    add_data_and_device_arguments(parser)
    args = parser.parse_args()

    try:
        config = MetaTrainConfig.load(args.config)
        changes = {}
        if args.validation_tasks is not None:
            changes["validation_tasks"] = args.validation_tasks
        if args.threads is not None:
            changes["num_threads"] = args.threads
        if args.data_dir is not None:
            changes["data_dir"] = args.data_dir
        if args.device is not None:
            changes["device"] = args.device
        config = config.replace(**changes)
        horizons = args.horizons or config.validation_horizons
        scores = score_baseline(args.optimizer, args.lr, config, horizons)
    except (ValueError, FileNotFoundError) as error:
        print(f"score_baseline.py: {error}", file=sys.stderr)
        return 2

    count = config.validation_tasks
    networks = "network" if count == 1 else "networks"
    print(f"{args.optimizer} lr {args.lr:g} on {count} {networks}")
    print("| steps | validation loss | validation error |")
    print("|---:|---:|---:|")
    diverged_by = None
    for steps, (loss, error) in zip(horizons, scores, strict=True):
        print(f"| {steps} | {loss:.4f} | {100 * error:.2f} % |")
        if diverged_by is None and not math.isfinite(loss):
            diverged_by = steps
    if diverged_by is not None:
        # A diverged network scores loss inf and error 1 from then on, so the
        # first horizon with loss inf bounds when it diverged.
        print(
            f"score_baseline.py: warning: at least one network diverged within "
            f"{diverged_by} steps at lr {args.lr:g}, so the mean loss is inf from "
            "there on; try a smaller --lr",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
