"""Score a torch.optim baseline on the validation networks of a meta-training run.

Usage: python scripts/score_baseline.py RUN/config.json --optimizer adam \
    --lr 0.0078 --horizons 100,1000 [--validation-tasks N] [--threads N]

The networks, minibatches and scores are those that `slstm meta-train`
validates with and `slstm calibrate` scores, so the printed losses sit beside a
learned optimizer's. Nothing is meta-trained, and the test split is never read.
"""

import argparse

import torch

from slstm.meta.calibrate import score_baseline
from slstm.meta.config import MetaTrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config.json of a meta-training run")
    parser.add_argument("--optimizer", default="adam", help="sgd, rmsprop or adam")
    parser.add_argument("--lr", type=float, required=True, help="learning rate")
    parser.add_argument("--horizons", default=None, help="e.g. 100,1000")
    parser.add_argument("--validation-tasks", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = MetaTrainConfig.load(args.config)
    if args.validation_tasks:
        config = config.replace(validation_tasks=args.validation_tasks)
    horizons = [int(h) for h in args.horizons.split(",")] if args.horizons else None
    horizons = horizons or config.validation_horizons
    scores = score_baseline(args.optimizer, args.lr, config, horizons)
    print(f"{args.optimizer} lr {args.lr:g} on {config.validation_tasks} networks")
    print("| steps | validation loss | validation error |")
    print("|---:|---:|---:|")
    for steps, (loss, error) in zip(horizons, scores, strict=True):
        print(f"| {steps} | {loss:.4f} | {100 * error:.2f} % |")


if __name__ == "__main__":
    main()
