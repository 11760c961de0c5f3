"""Choose a learned optimizer's output scale on held-out validation tasks.

A meta-trained update network proposes ``update = output_scale * readout(h)``,
so the scale acts as a learning rate on top of what meta-training learned, and
it can be tuned afterwards, the way a baseline's learning rate is. Each
candidate scale is scored like ``slstm meta-train`` scores its checkpoints.
Fresh networks from the run's validation tasks are trained with the frozen
update networks on the held-out validation split. Their losses are averaged,
here after each of several horizons of one run. A scale that is best
at the meta-training horizon can stall or collapse in longer runs, which is why
more than one horizon can take part. Nothing is meta-trained here, and the test
split is never read.

    slstm calibrate slstm-fashion-mnist --scales 0.1,0.2,0.3 --horizons 100,1000 \
        --out calibrated.pt
"""

import argparse
import copy
import logging
import math
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from slstm.meta.config import MetaTrainConfig, saved_validation_seed
from slstm.utils import check_output_path, command_line

logger = logging.getLogger("slstm.meta")


@dataclass
class ScaleTrial:
    """Validation result of one output scale.

    ``validation_loss`` and ``validation_error`` are means over the validation
    networks and over the horizons. ``losses`` and ``errors`` contain the means
    over the networks at each horizon, in the order of ``horizons``.
    """

    output_scale: float
    validation_loss: float
    validation_error: float
    seconds: float
    horizons: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    errors: list = field(default_factory=list)


class OutputWriteError(OSError):
    """Writing the checkpoint with the best scale failed after every scale was
    scored; ``result`` contains the scores, with ``result.out`` None."""

    def __init__(self, message: str, result: "CalibrationResult"):
        super().__init__(message)
        self.result = result


@dataclass
class CalibrationResult:
    """Outcome of :func:`calibrate_output_scale`.

    Attributes:
        trials: one :class:`ScaleTrial` per candidate, in the order given.
        best_scale: the scale with the lowest validation loss (the first one on
            a tie).
        config: the meta-training configuration whose data and validation
            tasks were used.
        out: the checkpoint written with ``best_scale``, or None.
        record: what the written checkpoint's provenance stores under
            ``output_scale_calibration``: the source file with the commit and
            time it was saved at, every trial, the validation set-up with its
            full meta-training configuration, the command, and an earlier
            calibration of the source (``previous``).
    """

    trials: list[ScaleTrial]
    best_scale: float
    config: MetaTrainConfig
    out: Path | None = None
    record: dict = field(default_factory=dict)


def calibrate_output_scale(
    checkpoint,
    scales,
    *,
    config: MetaTrainConfig | None = None,
    validation_tasks: int | None = None,
    horizons=None,
    validation_seed: int | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    out=None,
    seed: int | None = None,
) -> CalibrationResult:
    """Score ``checkpoint`` at each output scale and optionally save the best.

    Args:
        checkpoint: a path or shipped name of an optimizer checkpoint.
        scales: candidate output scales (positive numbers, in parameter units
            per step).
        config: the meta-training configuration that defines the data, the
            optimizee networks and the validation split. Default: the one in
            the checkpoint's provenance (``meta_train_config``).
        validation_tasks, validation_seed: override the configuration's
            number of validation networks and the seed that draws them. That
            seed also carves the validation split, so a seed other than the
            run's may validate on images it meta-trained on.
        horizons: increasing step counts after which each validation network
            is scored within one run (default: the configuration's validation
            horizon). A scale's score is the mean loss over them. Scoring
            at a long horizon as well guards against a scale that is best at
            the meta-training horizon but stalls or collapses later.
        data_dir: directory of the data set's files, overriding the
            configuration's.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (default: the
            configuration's).
        threads: torch CPU threads (default: the configuration's).
        out: where to write the checkpoint with the best scale; its provenance
            is the original one plus an ``output_scale_calibration`` record.
            Its folder is checked for writing before any scale is scored.
        seed: the former name of ``validation_seed``; deprecated.

    Raises:
        OutputWriteError: ``out`` could not be written after scoring; its
            ``result`` contains the scores.
    """
    from slstm.meta.trainer import (
        MetaTrainer,
        check_horizons,
        copy_update_nets,
        learned_optimizer_config,
        learned_optimizer_options,
    )
    from slstm.optim import load_checkpoint, save_checkpoint

    if seed is not None:
        if validation_seed is not None and validation_seed != seed:
            raise ValueError(
                f"seed={seed!r} and validation_seed={validation_seed!r} disagree; "
                "seed is the former name of validation_seed, so pass only "
                "validation_seed"
            )
        warnings.warn(
            "calibrate_output_scale(seed=...) is deprecated; pass validation_seed",
            DeprecationWarning,
            stacklevel=2,
        )
        validation_seed = seed
    scales = _check_scales(scales)
    if out is not None:
        out = check_output_path(out)
    loaded = load_checkpoint(checkpoint)
    if config is None:
        saved = loaded.provenance.get("meta_train_config")
        if not isinstance(saved, dict):
            raise ValueError(
                f"{str(loaded.path)!r} records no usable meta_train_config in its "
                "provenance; pass the config.json of the run that trained it"
            )
        config = MetaTrainConfig.from_saved(saved)
    else:
        _warn_about_other_tasks(loaded, config)
    # The checkpoint's own architecture is scored, not the configuration's.
    changes = {"init": None, "search": 0, **learned_optimizer_options(loaded.config)}
    if threads is not None:
        changes["num_threads"] = threads
    if validation_tasks is not None:
        changes["validation_tasks"] = validation_tasks
    if validation_seed is not None:
        changes["validation_seed"] = validation_seed
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if device is not None:
        changes["device"] = device
    config = config.replace(**changes)
    _warn_about_other_split(loaded, config)
    if config.validation in (0, 0.0):
        raise ValueError(
            "the configuration carves no validation split (validation=0); pass "
            "--config with a run whose validation is a positive count or fraction"
        )
    if horizons is None:
        horizons = config.validation_horizons
    horizons = check_horizons(horizons)
    expected = replace(
        learned_optimizer_config(config), output_scale=loaded.config.output_scale
    )
    if expected != loaded.config:
        raise ValueError(
            f"{str(loaded.path)!r} has inputs {loaded.config.inputs} and kinds "
            f"{loaded.config.kinds}, but meta-training builds {expected.inputs} and "
            f"{expected.kinds}; only checkpoints of the lstm or slstm presets can "
            "be calibrated"
        )

    trials: list[ScaleTrial] = []
    data = None
    with tempfile.TemporaryDirectory() as scratch:
        for scale in scales:
            trainer = MetaTrainer(
                config.replace(output_scale=scale, out=scratch),
                progress=False,
                data=data,
            )
            data = trainer.data
            copy_update_nets(loaded.nets, trainer.nets, loaded.config.kinds)
            # Timed after the data set is loaded, which the first scale does.
            started = time.perf_counter()
            scores = trainer.validate_at(horizons)
            losses = [loss for loss, _ in scores]
            errors = [error for _, error in scores]
            trial = ScaleTrial(
                scale,
                sum(losses) / len(losses),
                sum(errors) / len(errors),
                time.perf_counter() - started,
                horizons,
                losses,
                errors,
            )
            trials.append(trial)
            logger.info(
                "output scale %g: validation loss %s after %s steps, mean %.4f "
                "(%.1f s)",
                scale,
                ", ".join(f"{loss:.4f}" for loss in losses),
                ", ".join(str(h) for h in horizons),
                trial.validation_loss,
                trial.seconds,
            )

    finite = [t for t in trials if math.isfinite(t.validation_loss)]
    if not finite:
        raise ValueError(
            f"every output scale in {scales} diverged on validation; try smaller scales"
        )
    best = min(finite, key=lambda t: t.validation_loss)
    record = {
        "source": str(loaded.path.resolve()),
        # Saving overwrites the top-level commit and time with this save's, so
        # keep those of the file that meta-training (or a calibration) wrote.
        "source_git_commit": loaded.provenance.get("git_commit"),
        "source_saved_at": loaded.provenance.get("saved_at"),
        "source_output_scale": loaded.config.output_scale,
        "chosen_output_scale": best.output_scale,
        "validation_tasks": config.validation_tasks,
        "horizons": horizons,
        "validation_seed": config.validation_seed,
        # Data set, networks and validation split the scores come from.
        "meta_train_config": config.replace(out="").to_dict(),
        "command": command_line(),
        "trials": [asdict(t) for t in trials],
        "previous": loaded.provenance.get("output_scale_calibration"),
    }
    result = CalibrationResult(trials, best.output_scale, config, record=record)
    if out is not None:
        chosen = copy.deepcopy(loaded.nets)
        for net in chosen.values():
            net.output_scale = best.output_scale
        new_config = replace(loaded.config, output_scale=best.output_scale)
        provenance = {**loaded.provenance, "output_scale_calibration": record}
        try:
            result.out = Path(save_checkpoint(out, chosen, new_config, provenance))
        except OSError as error:
            # The error's own file name is save_checkpoint's temporary file,
            # which the caller never named, so report --out instead.
            raise OutputWriteError(
                f"writing --out {str(out)!r} failed after scoring: "
                f"{error.strerror or error}; the best output scale was "
                f"{best.output_scale!r}. Pass a writable --out path and run again",
                result,
            ) from error
    return result


# Fields that decide which tasks and data a scale is scored on.
_TASK_FIELDS = ("data", "net", "net_sizes", "task_classes", "classes", "batch_size")


def _warn_about_other_split(loaded, config: MetaTrainConfig) -> None:
    """Log a warning when ``config`` holds out other examples than the run that
    meta-trained the checkpoint, which may then score on images it trained on."""
    saved = loaded.provenance.get("meta_train_config")
    trained = saved_validation_seed(saved) if isinstance(saved, dict) else None
    if trained is not None and config.validation_seed != trained:
        logger.warning(
            "the validation seed %d differs from the validation seed %d of the run "
            "that meta-trained %s, so the validation split holds other images than "
            "that run held out; pass --validation-seed %d to score on those",
            config.validation_seed,
            trained,
            loaded.path,
            trained,
        )


def _warn_about_other_tasks(loaded, config: MetaTrainConfig) -> None:
    """Log a warning when ``config`` scores other tasks than the checkpoint's
    meta-training run trained on (a legitimate transfer, or a wrong file)."""
    saved = loaded.provenance.get("meta_train_config")
    if not isinstance(saved, dict):
        return
    requested = config.to_dict()
    differing = [
        f"{name}: checkpoint {saved[name]!r}, --config {requested[name]!r}"
        for name in _TASK_FIELDS
        if name in saved and name in requested and saved[name] != requested[name]
    ]
    if differing:
        logger.warning(
            "--config scores other tasks than %s was meta-trained on (%s)",
            loaded.path,
            "; ".join(differing),
        )


def score_baseline(
    name: str, lr: float, config: MetaTrainConfig, horizons=None
) -> list[tuple[float, float]]:
    """Score a ``torch.optim`` baseline on a run's validation networks.

    The networks, minibatches and scoring are those of
    :meth:`MetaTrainer.validate_at`, so the result sits beside a learned
    optimizer's validation or calibration scores. ``name`` is ``"sgd"``,
    ``"rmsprop"`` or ``"adam"`` and ``lr`` its learning rate.

    Returns one mean ``(loss, error)`` over the networks per entry of
    ``horizons`` (default: the run's validation horizons). A network that
    diverges counts as loss ``inf`` and error 1 from then on.
    """
    import torch

    from slstm.meta.trainer import MetaTrainer, check_horizons
    from slstm.optim import OPTIMIZERS

    spec = OPTIMIZERS.get(name)
    if spec is None or spec.learned or spec.needs_curvature:
        plain = sorted(
            n for n, s in OPTIMIZERS.items() if not s.learned and not s.needs_curvature
        )
        raise ValueError(
            f"score_baseline takes one of {plain}, got {name!r}; score learned "
            "optimizers with slstm calibrate"
        )
    if isinstance(lr, bool) or not (isinstance(lr, int | float) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not math.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr!r}")
    horizons = check_horizons(
        config.validation_horizons if horizons is None else horizons
    )

    def make_runner(optimizee):
        params = [p.clone().requires_grad_(True) for p in optimizee.params]
        optimizer = spec.make(params, lr)

        def run(steps: int) -> bool:
            for _ in range(steps):
                with torch.no_grad():
                    for param, grad in zip(
                        params, optimizee.current.grads, strict=True
                    ):
                        param.grad = grad.detach().clone()
                    optimizer.step()
                if not optimizee.move_to([p.detach() for p in params]):
                    return False
            return True

        return run

    threads = torch.get_num_threads()  # MetaTrainer applies config.num_threads.
    with tempfile.TemporaryDirectory() as scratch:
        # The gradient-only preset, so that no curvature is computed.
        trainer = MetaTrainer(
            config.replace(optimizer="lstm", out=scratch, init=None), progress=False
        )
        scores = trainer.validate_at(horizons, make_runner)
    torch.set_num_threads(threads)
    return scores


def _check_scales(scales) -> list[float]:
    scales = [float(s) for s in scales]
    if not scales:
        raise ValueError("give at least one output scale, e.g. 0.1,0.2,0.3")
    for scale in scales:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"output scales must be positive numbers, got {scale!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"output scales must differ, got {scales}")
    return scales


# ---------------------------------------------------------------- command line


def add_data_and_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir`` and ``--device``, which override a run's values when
    its validation tasks are scored on another machine."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory of the data set's files (default: the run's)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where to train (default: the run's)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="optimizer checkpoint: a file or a shipped name"
    )
    parser.add_argument(
        "--scales",
        required=True,
        type=_float_list,
        metavar="LIST",
        help="comma-separated output scales to score, e.g. 0.1,0.2,0.3",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="write the checkpoint with the best scale here (default: only "
        "print the scores); it may name the checkpoint itself, and the new "
        "calibration record keeps the source's output scale, commit and any "
        "earlier calibration ('previous')",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config.json of the meta-training run whose data and validation "
        "tasks to use (default: the one in the checkpoint's provenance)",
    )
    parser.add_argument(
        "--validation-tasks",
        type=_positive_int,
        metavar="N",
        help="fresh networks trained per scale (default: the run's)",
    )
    parser.add_argument(
        "--horizons",
        type=_int_list,
        metavar="LIST",
        help="comma-separated step counts after which each validation network "
        "is scored, e.g. 100,1000; a scale's score is the mean loss over them "
        "(default: the run's validation horizon)",
    )
    parser.add_argument(
        "--validation-seed",
        type=int,
        metavar="N",
        help="seed that draws the validation networks and carves the validation "
        "split (default: the run's, which keeps the validation images held out "
        "from its meta-training)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="the former name of --validation-seed",
    )
    add_data_and_device_arguments(parser)
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="torch CPU threads (default: the run's)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    from slstm.meta.config import parse_step_counts

    try:
        return parse_step_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _float_list(text: str) -> list[float]:
    try:
        # float("") raises, so an empty entry such as in "0.1," is rejected.
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, such as 0.1,0.2,0.3, got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    from slstm.optim import CheckpointError

    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    validation_seed = args.validation_seed
    if args.seed is not None:
        if validation_seed is not None and validation_seed != args.seed:
            print(
                f"slstm calibrate: --seed {args.seed} and --validation-seed "
                f"{validation_seed} disagree; --seed is the former name of "
                "--validation-seed, so pass only --validation-seed",
                file=sys.stderr,
            )
            return 2
        validation_seed = args.seed
    try:
        config = MetaTrainConfig.load(args.config) if args.config else None
        result = calibrate_output_scale(
            args.checkpoint,
            args.scales,
            config=config,
            validation_tasks=args.validation_tasks,
            horizons=args.horizons,
            validation_seed=validation_seed,
            data_dir=args.data_dir,
            device=args.device,
            threads=args.threads,
            out=args.out,
        )
    except OutputWriteError as error:
        # Scoring can take minutes, so show the scores before the failure.
        _print_scores(error.result)
        print(f"slstm calibrate: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError, CheckpointError) as error:
        print(f"slstm calibrate: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slstm calibrate: interrupted; nothing was written", file=sys.stderr)
        return 130
    _print_scores(result)
    if result.out is not None:
        print(f"wrote {result.out} with output scale {result.best_scale!r}")
    return 0


def _print_scores(result: CalibrationResult) -> None:
    """Print one Markdown table row per scale, marking the best."""
    horizons = result.trials[0].horizons
    columns = "".join(f" loss @{h} | error @{h} |" for h in horizons)
    print(f"| output scale |{columns} mean loss |")
    print("|---:|" + "---:|---:|" * len(horizons) + "---:|")
    for trial in result.trials:
        mark = " (best)" if trial.output_scale == result.best_scale else ""
        cells = "".join(
            f" {loss:.4f} | {100 * error:.2f} % |"
            for loss, error in zip(trial.losses, trial.errors, strict=True)
        )
        print(f"| {trial.output_scale!r}{mark} |{cells} {trial.validation_loss:.4f} |")
