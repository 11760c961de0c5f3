"""``slstm train``: train one CNN with any registered optimizer, or jointly.

Examples::

    slstm train --optimizer adam --lr 3e-3 --data fashion-mnist --steps 2000
    slstm train --optimizer slstm --checkpoint runs/slstm/best.pt --steps 2000
    slstm train --optimizer slstm --joint --steps 2000 --unroll 20 --out runs/joint

With ``--joint`` the learned optimizer's update networks are meta-updated every
``--unroll`` steps along this same run (see :mod:`slstm.meta.joint`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from slstm.meta.config import MetaTrainConfig, parse_net_sizes
from slstm.meta.io import atomic_write_text
from slstm.utils import check_output_dir

logger = logging.getLogger("slstm.meta")

TRAIN_FIELDS = (
    "step",
    "train_loss",
    "test_loss",
    "test_error",
    "meta_steps",
    "seconds",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``slstm train`` to ``parser``."""
    from slstm.data import add_data_arguments
    from slstm.optim import OPTIMIZERS

    parser.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="adam",
        help="optimizer from slstm.optim's registry (default: adam)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        help="learning rate of a hand-designed optimizer (default: its registry "
        "default); learned optimizers have none",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="NAME_OR_PATH",
        help="learned optimizer checkpoint: a shipped name such as "
        "slstm-fashion-mnist or a .pt file (default: the shipped one of "
        "--optimizer; with --joint: fresh update networks)",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--net",
        default="mnist_cnn",
        help="network from slstm.models (default: mnist_cnn)",
    )
    parser.add_argument(
        "--net-sizes",
        type=_net_sizes,
        default={},
        metavar="NAME=VALUE,...",
        help="network sizes, e.g. channels=16,hidden=32",
    )
    parser.add_argument(
        "--steps", type=int, default=1000, help="training steps (default: 1000)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        metavar="N",
        help="minibatch size (default: 128)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the initial weights, the minibatch order and the validation "
        "split (default: 0)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=100,
        metavar="N",
        help="evaluate on the test split every N steps, 0 for only at the end",
    )
    parser.add_argument(
        "--curvature-method",
        metavar="METHOD",
        help="diagonal Hessian method for optimizers that read it (default: the "
        "checkpoint's, else becker-lecun); a learned optimizer accepts only the "
        "method it was meta-trained on",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="write metrics.csv and config.json here (and optimizer.pt with --joint)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)"
    )

    joint = parser.add_argument_group("joint meta-learning (--joint)")
    joint.add_argument(
        "--joint",
        action="store_true",
        help="meta-update the learned optimizer every --unroll steps of this run",
    )
    joint.add_argument(
        "--unroll",
        type=int,
        default=20,
        metavar="T",
        help="optimizee steps between meta-updates; the meta-gradient flows back "
        "through these T steps (default: 20)",
    )
    joint.add_argument(
        "--meta-lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)"
    )
    joint.add_argument(
        "--clip-norm", type=float, default=1.0, help="meta-gradient norm clip"
    )
    joint.add_argument(
        "--meta-loss",
        choices=("sum", "log"),
        default="sum",
        help="meta-loss over an unroll: the weighted sum of the optimizee losses, "
        "or of their logarithms, which weighs late, small losses more (default: sum)",
    )
    joint.add_argument(
        "--output-scale",
        type=float,
        default=0.1,
        help="output scale of fresh update networks (default: 0.1)",
    )


def _net_sizes(text: str) -> dict:
    try:
        return parse_net_sizes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    """Run ``slstm train``. A user error prints one line and returns 2."""
    try:
        return _run(args)
    except (ValueError, OSError) as error:
        # The project's errors (DataError, CheckpointError, UnsupportedModelError,
        # NonFiniteInputError) are ValueErrors whose message names the value and
        # the fix, so the message alone is clearer than a traceback.
        print(f"slstm train: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1:
        raise ValueError(f"--steps must be positive, got {args.steps}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    _check_options(args)
    out = None if args.out is None else check_output_dir(args.out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        atomic_write_text(json.dumps(settings, indent=2, default=str) + "\n",
                          out / "config.json")  # fmt: skip
        (out / "metrics.csv").write_text(",".join(TRAIN_FIELDS) + "\n")

    def report(step, train_loss, test_loss, test_error, meta_steps, seconds):
        shown = f"{train_loss:.4f}" if math.isfinite(train_loss) else "   -  "
        line = (
            f"step {step:6d}  train loss {shown}  test loss {test_loss:.4f}  "
            f"test error {100 * test_error:5.2f}%"
        )
        if args.joint:
            line += f"  meta-steps {meta_steps}"
        print(line, flush=True)
        if out is not None:
            values = (step, train_loss, test_loss, test_error, meta_steps, seconds)
            with open(out / "metrics.csv", "a", encoding="utf-8") as handle:
                handle.write(",".join(repr(v) for v in values) + "\n")

    if args.joint:
        return _run_joint(args, out, report)
    return _run_plain(args, report)


def _run_joint(args, out, report) -> int:
    from slstm.meta.joint import save_joint_optimizer, train_jointly

    config = MetaTrainConfig(
        optimizer=args.optimizer,
        data=args.data,
        data_dir=args.data_dir,
        classes=args.classes,
        image_size=args.image_size,
        validation=args.validation,
        net=args.net,
        net_sizes=args.net_sizes,
        unroll=args.unroll,
        batch_size=args.batch_size,
        seed=args.seed,
        meta_lr=args.meta_lr,
        clip_norm=args.clip_norm,
        meta_loss=args.meta_loss,
        curvature_method=_joint_curvature_method(args),
        output_scale=args.output_scale,
        device=args.device,
        validate_every=0,
        out=str(out) if out else "unused",
    )
    _record_method(args.out, config.curvature_method)
    trainer, records, diverged = train_jointly(
        config,
        steps=args.steps,
        eval_every=args.eval_every,
        initial_checkpoint=args.checkpoint,
        on_record=lambda r: report(
            r.step, r.train_loss, r.test_loss, r.test_error, r.meta_steps, r.seconds
        ),
    )
    if out is not None:
        path = save_joint_optimizer(trainer, out / "optimizer.pt", records[-1].step)
        print(f"update networks after joint training: {path}")
    return 1 if diverged else 0


def _record_method(out, method: str) -> None:
    """Write the curvature method that runs into config.json, in place of the
    option's None default."""
    if out is None:
        return
    path = Path(out) / "config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["curvature_method"] = method
    atomic_write_text(json.dumps(settings, indent=2) + "\n", path)


def _check_options(args) -> None:
    """Reject options that do not fit together, before any file is written."""
    from slstm.curvature import METHODS
    from slstm.optim import OPTIMIZERS

    method = args.curvature_method
    if method is not None and method not in METHODS:
        raise ValueError(
            f"--curvature-method {method!r} is invalid; use one of {', '.join(METHODS)}"
        )
    if args.joint:
        if args.optimizer not in ("lstm", "slstm"):
            hint = (
                "; to go on from the Hutchinson variant, pass --optimizer slstm "
                "--checkpoint slstm-hutchinson-fashion-mnist"
                if args.optimizer == "slstm-hutchinson"
                else ""
            )
            raise ValueError(
                "--joint meta-learns update networks of --optimizer lstm or "
                f"slstm, got {args.optimizer}{hint}"
            )
        reads_curvature = args.optimizer == "slstm"
    else:
        reads_curvature = OPTIMIZERS[args.optimizer].needs_curvature
    if method is not None and not reads_curvature:
        raise ValueError(
            f"--optimizer {args.optimizer} reads no diagonal Hessian, so "
            f"--curvature-method {method} would have no effect; drop it"
        )
    if args.joint:
        _joint_curvature_method(args)


def _joint_curvature_method(args) -> str:
    """Return the method a --joint run computes h with: the checkpoint's unless
    --curvature-method names one. Raise ValueError when the two differ."""
    from slstm.optim import load_checkpoint

    trained = None
    if args.checkpoint is not None:
        trained = load_checkpoint(args.checkpoint).config.curvature_method
    method = args.curvature_method
    if method is None:
        return trained or "becker-lecun"
    if trained is not None and args.optimizer == "slstm" and method != trained:
        raise ValueError(
            f"--curvature-method {method} differs from {trained}, the method "
            f"that the checkpoint {args.checkpoint} was meta-trained on; drop "
            "--curvature-method"
        )
    return method


def _run_plain(args, report) -> int:
    from slstm.curvature import backward
    from slstm.data import batch_iterator, load_dataset
    from slstm.meta.trainer import evaluate_model
    from slstm.models import build_model
    from slstm.optim import OPTIMIZERS, load_checkpoint
    from slstm.utils import probe_generator, resolve_device

    spec = OPTIMIZERS[args.optimizer]
    device = resolve_device(args.device)
    data = load_dataset(
        args.data,
        args.data_dir,
        classes=args.classes,
        validation=args.validation,
        seed=args.seed,
        device=device,
        image_size=args.image_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build_model(
            args.net, data.input_shape, data.num_classes, **args.net_sizes
        )
    model.to(device)
    options = {}
    if spec.learned:
        if args.lr is not None:
            raise ValueError(
                f"{args.optimizer} has no learning rate (its step size "
                "is meta-trained); drop --lr"
            )
        checkpoint = load_checkpoint(
            args.checkpoint or f"{args.optimizer}-fashion-mnist", map_location=device
        )
        options.update(nets=checkpoint.nets, config=checkpoint.config)
        _warn_if_trained_elsewhere(args, checkpoint.provenance or {})
    elif args.checkpoint:
        raise ValueError(
            f"--checkpoint applies to learned optimizers, not {args.optimizer}"
        )
    optimizer = spec.make(model, args.lr, **options)
    method = args.curvature_method
    learned_method = getattr(optimizer, "curvature_method", None)
    if method is None:
        method = learned_method or "becker-lecun"
    elif learned_method is not None and method != learned_method:
        raise ValueError(
            f"--curvature-method {method} differs from {learned_method}, the "
            f"method that the {args.optimizer} checkpoint was meta-trained on; "
            "drop --curvature-method"
        )
    _record_method(args.out, method)

    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator(device=data.train.device).manual_seed(args.seed)
    batches = batch_iterator(
        data.train, args.batch_size, generator=generator, device=device
    )
    # The curvature pass's random draws come from the run's seed, so that a
    # run repeats exactly.
    probes = probe_generator(args.seed, device)
    started = time.perf_counter()
    test_loss, test_error = evaluate_model(model, data.test, device)
    report(0, math.nan, test_loss, test_error, 0, 0.0)
    for step in range(1, args.steps + 1):
        inputs, targets = next(batches)
        optimizer.zero_grad(set_to_none=True)
        if spec.needs_curvature:
            loss = backward(
                model, loss_fn, inputs, targets, method=method, generator=probes
            )
        else:
            loss = loss_fn(model(inputs), targets)
            loss.backward()
        train_loss = float(loss.detach())
        if not math.isfinite(train_loss):
            print(f"the training loss became {train_loss} at step {step}; stopped")
            return 1
        optimizer.step()
        if (args.eval_every and step % args.eval_every == 0) or step == args.steps:
            test_loss, test_error = evaluate_model(model, data.test, device)
            report(
                step,
                train_loss,
                test_loss,
                test_error,
                0,
                time.perf_counter() - started,
            )
    return 0


def _warn_if_trained_elsewhere(args, provenance: dict) -> None:
    """Print a warning when the checkpoint was meta-trained on another setting.

    A learned optimizer's updates are tuned to the gradient and curvature scales
    of the network it was meta-trained on; the shipped checkpoints used
    mnist_cnn with channels=16, while this command's default is channels=64.
    """
    from slstm.experiments.learned import network_note

    note = network_note(
        provenance, args.net, args.net_sizes, args.batch_size, data=args.data
    )
    if note:
        print(
            f"slstm train: warning: {args.optimizer} checkpoint {note}", file=sys.stderr
        )
