"""The experiment runner: tune, train every optimizer on every seed, record, plot.

``run_experiment`` composes the other subpackages:

1. ``slstm.data`` reads the preset's data set and carves a validation split;
2. ``slstm.optim`` provides the baselines and loads the learned optimizers from
   checkpoints, or ``slstm.meta.meta_train`` meta-trains them first;
3. ``slstm.meta.search.tune_learning_rate`` picks each baseline's learning rate
   by the validation loss;
4. every optimizer trains the preset network from the same initialisation on
   the same minibatches within each seed (``training.train_run``);
5. the records, plots and summary go to the output directory.
"""

import dataclasses
import datetime
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import records
from .learned import load_learned_optimizers, meta_horizon, network_note, trained_on
from .plots import plot_results
from .presets import (
    BASELINES,
    DISPLAY_NAMES,
    LEARNED,
    OPTIMIZER_NAMES,
    SCALES,
    STUDIES,
    TRANSFER_MODELS,
    get_preset,
    resolve_scale,
)
from .studies import (
    RunContext,
    choose_learning_rates,
    run_comparison,
    run_horizon,
    run_lr_sensitivity,
)
from .summary import format_main_table, render_summary, summary_table
from .training import EvalSets, evaluation_steps

DEFAULT_LR_MULTIPLIERS = (0.1, 0.3, 1.0, 3.0, 10.0)
# Fixed seed of the validation split and of the evaluation subsets, so every
# seed of an experiment is scored on the same images.
SPLIT_SEED = 0


@dataclass
class ExperimentConfig:
    """Every option of ``slstm experiment``; saved as config.json.

    Attributes:
        preset: a ``PRESETS`` name.
        scale: "auto", "small" or "full" (see ``resolve_scale``).
        data: data set overriding the preset's (a ``slstm.data.DATASETS`` name).
        data_dir: directory of the data set's files (None: its default place).
        out: output directory (None: a new folder under ``runs/``).
        steps: update steps of every run of the comparison.
        seeds: number of seeds, ``first_seed .. first_seed + seeds - 1``.
        first_seed: first seed.
        batch_size: minibatch size (None: the scale's).
        eval_every: steps between evaluations of the training subset and test set
            (None: the scale's).
        device: "auto", "cpu" or "cuda".
        optimizers: registry names of the optimizers to compare.
        lstm_checkpoint, slstm_checkpoint, slstm_hutchinson_checkpoint: shipped
            checkpoint name or file path of the learned optimizers (None: the
            shipped Fashion-MNIST ones, or meta-training where the preset
            requires it).
        meta_train: meta-train the learned optimizers first instead of loading
            checkpoints.
        meta_episodes: meta-training episodes (None: the preset's, or
            ``meta_config``'s).
        meta_horizon: steps per meta-training episode (None: ``meta_config``'s
            or `slstm meta-train`'s default).
        meta_config: JSON file of ``slstm.meta.MetaTrainConfig`` options that
            ``--meta-train`` starts from (None: the preset's task).
        tune_trials: random-search trials per baseline (None: the scale's; 0:
            no tuning, the registry's default learning rates).
        learning_rates: fixed learning rates by optimizer name; those are not tuned.
        lr_ranges: ``(low, high)`` search range by baseline name, replacing
            ``LR_SEARCH_RANGES`` for that baseline.
        curvature_method: diagonal Hessian of DiagonalNewton.
        studies: extra studies to run, from ``STUDIES``.
        study_seeds: seeds of the learning-rate sensitivity study (None: the
            scale's), the first ones of the main seeds.
        horizon_seeds: seeds of the horizon study, the first ones of the main
            seeds (None: all of them, because "no long run diverges" is a claim
            about every seed).
        lr_multipliers: factors of the learning-rate sensitivity study.
        horizon_factor: the horizon study runs this many times the
            meta-training horizon.
        model_sizes: size keywords overriding the scale's network sizes; the
            scale's sizes are kept for keywords not given.
        validation_size: training images held out to tune the baselines (None:
            the scale's).
        train_eval_size, test_eval_size: evaluation subset sizes (None: the
            scale's; 0 for the test set means every test image).
        image_size: side of image-folder images in pixels (None: the preset's).
        threads: torch CPU threads (None: the scale's, 1 at small scale and
            torch's default at full scale).
    """

    preset: str = "fashion-mnist"
    scale: str = "auto"
    data: str | None = None
    data_dir: str | None = None
    out: str | None = None
    steps: int = 100
    seeds: int = 5
    first_seed: int = 0
    batch_size: int | None = None
    eval_every: int | None = None
    device: str = "auto"
    optimizers: tuple = OPTIMIZER_NAMES
    lstm_checkpoint: str | None = None
    slstm_checkpoint: str | None = None
    slstm_hutchinson_checkpoint: str | None = None
    meta_train: bool = False
    meta_episodes: int | None = None
    meta_horizon: int | None = None
    meta_config: str | None = None
    tune_trials: int | None = None
    learning_rates: dict = field(default_factory=dict)
    lr_ranges: dict = field(default_factory=dict)
    curvature_method: str = "becker-lecun"
    studies: tuple = STUDIES
    study_seeds: int | None = None
    horizon_seeds: int | None = None
    lr_multipliers: tuple = DEFAULT_LR_MULTIPLIERS
    horizon_factor: int = 10
    model_sizes: dict | None = None
    validation_size: int | None = None
    train_eval_size: int | None = None
    test_eval_size: int | None = None
    image_size: int | None = None
    threads: int | None = None

    def validate(self):
        """Raise ``ValueError`` naming the first invalid option and its fix."""
        get_preset(self.preset)
        if self.scale not in SCALES:
            raise ValueError(
                f"unknown scale {self.scale!r}; choose one of {', '.join(SCALES)}"
            )

        for name in ("steps", "seeds", "horizon_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in (
            "batch_size",
            "meta_episodes",
            "meta_horizon",
            "eval_every",
            "threads",
            "study_seeds",
            "horizon_seeds",
            "validation_size",
            "train_eval_size",
            "image_size",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"{name} must be a positive int or None, got {value!r}"
                )
        for name in ("tune_trials", "test_eval_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an int >= 0 or None, got {value!r}")

        repeated = sorted({n for n in self.optimizers if self.optimizers.count(n) > 1})
        if repeated:
            raise ValueError(
                f"optimizers lists {', '.join(repeated)} more than once; name each "
                "optimizer once"
            )
        from slstm.curvature import METHODS

        if self.curvature_method not in METHODS:
            raise ValueError(
                f"curvature_method {self.curvature_method!r} is invalid; use one "
                f"of {', '.join(METHODS)}"
            )
        unknown = [name for name in self.optimizers if name not in OPTIMIZER_NAMES]
        if unknown or not self.optimizers:
            raise ValueError(
                f"invalid optimizers {list(self.optimizers)}; choose from "
                f"{', '.join(OPTIMIZER_NAMES)}"
            )

        unknown = [name for name in self.learning_rates if name not in BASELINES]
        if unknown:
            raise ValueError(
                f"learning rates can be fixed only for {', '.join(BASELINES)}, "
                f"got {unknown}; scale a learned optimizer with --lr-multipliers"
            )
        for name, lr in self.learning_rates.items():
            if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
                raise ValueError(f"learning rate of {name} must be > 0, got {lr!r}")

        unknown = [name for name in self.lr_ranges if name not in BASELINES]
        if unknown:
            raise ValueError(
                f"search ranges can be set only for {', '.join(BASELINES)}, "
                f"got {unknown}"
            )
        for name, bounds in self.lr_ranges.items():
            low, high = bounds
            if not (0 < low < high and math.isfinite(high)):
                raise ValueError(
                    f"search range of {name} must satisfy 0 < LOW < HIGH, got "
                    f"{low!r}:{high!r}; e.g. --lr-range {name}=1e-5:1e-2"
                )

        unknown = [name for name in self.studies if name not in STUDIES]
        if unknown:
            raise ValueError(
                f"unknown studies {unknown}; choose from {', '.join(STUDIES)}"
            )
        if any(not (m > 0 and math.isfinite(m)) for m in self.lr_multipliers):
            raise ValueError(
                "lr_multipliers must be positive numbers, got "
                f"{list(self.lr_multipliers)}"
            )
        if "lr-sensitivity" in self.studies and set(self.lr_multipliers) <= {1.0}:
            raise ValueError(
                "lr_multipliers lists no factor other than 1, so the "
                "learning-rate sensitivity study would compare nothing; pass "
                "factors such as 0.3,3 or leave lr-sensitivity out of --studies"
            )
        if "horizon" in self.studies and self.horizon_factor < 2:
            raise ValueError(
                f"horizon_factor must be at least 2 for the horizon study, got "
                f"{self.horizon_factor}: its long runs are that many times the "
                "meta-training horizon, and at 1 every run would count as stalled"
            )

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class ExperimentResult:
    """Output of ``run_experiment``.

    Attributes:
        out_dir: the output directory.
        record: every measurement (``records.ExperimentRecord``).
        files: paths of the files written.
    """

    out_dir: Path
    record: records.ExperimentRecord
    files: list


def run_experiment(config, *, progress=True, command=None, log=None):
    """Run the experiment described by ``config`` and write its records.

    Args:
        config: an ``ExperimentConfig``.
        progress: show tqdm progress bars on stderr.
        command: the command line, recorded in the summary.
        log: ``log(message)`` for status lines (default: print above the bars).

    Returns:
        ``ExperimentResult``.
    """
    from slstm.utils import resolve_device

    config.validate()
    preset = get_preset(config.preset)
    device = resolve_device(config.device)
    scale, scale_reason = resolve_scale(config.scale, device)
    # A default validation size may shrink to fit a small data set, but a
    # given one that does not fit is an error.
    shrink_validation = config.validation_size is None
    config = resolve_config(config, preset, scale)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(
            config,
            preset,
            device,
            scale_reason,
            progress,
            command,
            log,
            shrink_validation=shrink_validation,
        )
    finally:
        torch.set_num_threads(threads)


def _run(
    config,
    preset,
    device,
    scale_reason,
    progress,
    command,
    log,
    *,
    shrink_validation=False,
):
    """Run a resolved ``config``; see ``run_experiment``."""
    from slstm.models import build_model, count_parameters

    log = log or _tqdm_write
    started = time.perf_counter()
    timing = {}
    scale = config.scale
    data_name = config.data
    model_name = preset.model
    if preset.name == "transfer":
        model_name = TRANSFER_MODELS.get(data_name, preset.model)
    model_sizes = config.model_sizes
    batch_size = config.batch_size
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    study_seeds = seeds[: config.study_seeds]
    horizon_seeds = seeds[: config.horizon_seeds]

    _check_no_results(config.out)
    # Data first, so that a missing or unusable data set leaves no folder.
    phase = time.perf_counter()
    splits, config = _load_data(config, device, shrink_validation, log)
    _check_batch_size(config, splits)
    out_dir = _output_dir(config.out, preset.name, scale)
    records.write_config(_config_dict(config, scale_reason, device), out_dir)
    log(f"experiment {preset.name}: scale {scale} ({scale_reason})")
    log(f"writing to {out_dir}")

    # The fixed evaluation subsets.
    eval_sets = EvalSets(
        loss_split=_fixed_subset(splits.train, config.train_eval_size),
        error_split=_fixed_subset(splits.test, config.test_eval_size or None),
    )
    timing["data"] = time.perf_counter() - phase

    def new_model():
        return build_model(
            model_name, splits.input_shape, splits.num_classes, **model_sizes
        )

    model = new_model().to(device)
    setup = {
        "scale": scale,
        "scale_reason": scale_reason,
        "device": str(device),
        "seeds": seeds,
        "batch_size": batch_size,
        "eval_steps": evaluation_steps(config.steps, config.eval_every),
        "command": command or "",
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "data": {
            "name": splits.name,
            "dir": str(config.data_dir or _default_data_dir(config.data)),
            "train": len(splits.train) + len(splits.validation or ()),
            "validation": len(splits.validation or ()),
            "test": len(splits.test),
            "train_eval": len(eval_sets.loss_split),
            "test_eval": len(eval_sets.error_split),
            "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape),
        },
        "model": {
            "name": model_name,
            "sizes": model_sizes,
            "parameters": count_parameters(model),
        },
    }
    log(
        f"network {model_name}({_format_sizes(model_sizes)}): "
        f"{setup['model']['parameters']} parameters; minibatch {batch_size}; "
        f"{config.steps} steps x {len(seeds)} seeds"
    )

    # Learned optimizers: shipped checkpoints, given files, or meta-training.
    phase = time.perf_counter()
    learned = load_learned_optimizers(
        config, preset, out_dir, device, progress=progress, log=log
    )
    checkpoints = {}
    for name, source in learned.items():
        provenance = dict(source.checkpoint.provenance or {})
        mismatch = network_note(
            provenance, model_name, model_sizes, batch_size, data=data_name
        )
        if mismatch:
            log(f"{DISPLAY_NAMES[name]}: {mismatch}")
        checkpoints[name] = {
            "source": source.source,
            "note": "; ".join(filter(None, [source.note, mismatch])),
            "trained_on": trained_on(provenance),
            "provenance": provenance,
        }
    timing["learned optimizers"] = time.perf_counter() - phase

    context = RunContext(
        model=model,
        new_model=new_model,
        splits=splits,
        batch_size=batch_size,
        device=device,
        eval_sets=eval_sets,
        learned=learned,
        curvature_method=config.curvature_method,
    )

    # Learning rates of the baselines.
    phase = time.perf_counter()
    learning_rates = choose_learning_rates(config, context, progress, log)
    timing["tuning"] = time.perf_counter() - phase

    record = records.ExperimentRecord(
        config=config.to_dict(),
        setup=setup,
        learning_rates=learning_rates,
        checkpoints=checkpoints,
        runs=[],
        timing=timing,
    )

    # The comparison. results.json and curves.csv are rewritten after each
    # phase, so an interrupted experiment keeps what it finished.
    phase = time.perf_counter()
    runs = record.runs
    runs += run_comparison(config, seeds, learning_rates, context, progress)
    timing["comparison"] = time.perf_counter() - phase
    records.write_results(record, out_dir)

    if "lr-sensitivity" in config.studies:
        phase = time.perf_counter()
        setup["lr_sensitivity"] = {
            "seeds": study_seeds,
            "multipliers": sorted(set(config.lr_multipliers) | {1.0}),
        }
        runs += run_lr_sensitivity(
            config, study_seeds, learning_rates, context, progress
        )
        timing["learning-rate sensitivity"] = time.perf_counter() - phase
        records.write_results(record, out_dir)

    if "horizon" in config.studies:
        names = [n for n in ("adam", *LEARNED) if n in config.optimizers]
        if any(name in LEARNED for name in names):
            phase = time.perf_counter()
            trained_horizon, source = meta_horizon(learned)
            setup["horizon"] = {
                "seeds": horizon_seeds,
                "factor": config.horizon_factor,
                "meta_horizon": trained_horizon,
                "meta_horizon_source": source,
                "steps": config.horizon_factor * trained_horizon,
                "optimizers": names,
            }
            runs += run_horizon(
                config, setup["horizon"], names, learning_rates, context, progress
            )
            timing["horizon"] = time.perf_counter() - phase
        else:
            log("horizon study skipped: no learned optimizer among --optimizers")

    timing["total"] = time.perf_counter() - started
    record.summary = summary_table(record)
    files = list(records.write_results(record, out_dir))
    files += plot_results(record, out_dir)
    summary_path = out_dir / records.SUMMARY_FILE
    summary_path.write_text(render_summary(record), encoding="utf-8")
    files.append(summary_path)
    log("")
    log(format_main_table(record))
    log(f"\nscale {scale} ({scale_reason}); total {timing['total']:.0f} s")
    log(f"results, plots and summary.md in {out_dir}")
    return ExperimentResult(out_dir=out_dir, record=record, files=files)


def resolve_config(config, preset, scale):
    """Return ``config`` with every scale-dependent None replaced by its value.

    The result is what config.json and results.json record, so a saved
    experiment names the sizes it ran with, not "the scale's default".
    """
    settings = preset.settings(scale)
    return dataclasses.replace(
        config,
        scale=scale,
        data=config.data or preset.data,
        batch_size=config.batch_size or settings.batch_size,
        eval_every=config.eval_every or settings.eval_every,
        tune_trials=(
            settings.tune_trials if config.tune_trials is None else config.tune_trials
        ),
        study_seeds=min(config.study_seeds or settings.study_seeds, config.seeds),
        horizon_seeds=min(config.horizon_seeds or config.seeds, config.seeds),
        model_sizes={**settings.model_sizes, **(config.model_sizes or {})},
        validation_size=config.validation_size or settings.validation_size,
        train_eval_size=config.train_eval_size or settings.train_eval_size,
        test_eval_size=(
            (settings.test_eval_size or 0)
            if config.test_eval_size is None
            else config.test_eval_size
        ),
        image_size=config.image_size or preset.image_size,
        threads=config.threads or settings.threads,
    )


def _load_data(config, device, shrink_validation=False, log=None):
    """Return the data splits and ``config``, whose default validation size
    is cut to a fifth of a training split too small for it when
    ``shrink_validation`` is set."""
    from slstm.data import load_dataset
    from slstm.data.splits import ValidationSizeError

    kwargs = {}
    if config.data == "imagefolder":
        kwargs["image_size"] = config.image_size

    def load(validation):
        return load_dataset(
            config.data,
            config.data_dir,
            validation=validation,
            seed=SPLIT_SEED,
            device=device,
            **kwargs,
        )

    try:
        return load(config.validation_size), config
    except ValidationSizeError as error:
        if shrink_validation and error.train_size >= 2:
            count = max(1, error.train_size // 5)
            if log is not None:
                log(
                    f"the default validation size {error.requested} does not fit "
                    f"the {error.train_size} training images of {config.data}; "
                    f"holding out {count} (a fifth) instead"
                )
            config = dataclasses.replace(config, validation_size=count)
            return load(count), config
        raise ValueError(
            f"--validation-size {error.requested} does not fit the "
            f"{error.train_size} training images of {config.data}; pass "
            f"--validation-size N with 1 <= N <= {error.train_size - 1}"
        ) from None


def _check_batch_size(config, splits) -> None:
    """Reject a minibatch larger than a split it is drawn from, before tuning."""
    for name, split in (("training", splits.train), ("validation", splits.validation)):
        if split is not None and len(split) < config.batch_size:
            raise ValueError(
                f"--batch-size {config.batch_size} is larger than the {len(split)} "
                f"images of the {name} split of {config.data}; pass a smaller "
                "--batch-size"
            )


def _default_data_dir(name):
    from slstm.data import DATASETS

    return DATASETS[name].default_dir or "none needed"


def _fixed_subset(split, size):
    """Return ``size`` examples of ``split`` in a fixed shuffle (all if None)."""
    from slstm.data import TensorSplit

    if size is None or size >= len(split):
        return split
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    index = torch.randperm(len(split), generator=generator)[:size]
    if isinstance(split, TensorSplit):
        index = index.to(split.inputs.device)
        return TensorSplit(split.inputs[index], split.targets[index])
    return torch.utils.data.Subset(split, index.tolist())


def _check_no_results(out) -> None:
    """Raise FileExistsError if ``out`` already contains an experiment's results."""
    if out is not None and (Path(out) / records.RESULTS_FILE).exists():
        raise FileExistsError(
            f"{out} already contains an experiment (results.json); pass a new "
            "directory with --out or remove the old one"
        )


def _output_dir(out, preset_name, scale):
    if out is not None:
        _check_no_results(out)
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{preset_name}-{scale}-{stamp}"
    path, suffix = base, 1
    while path.exists():
        suffix += 1
        path = base.with_name(f"{base.name}-{suffix}")
    path.mkdir(parents=True)
    return path


def _config_dict(config, scale_reason, device):
    values = config.to_dict()
    values["scale_reason"] = scale_reason
    values["resolved_device"] = str(device)
    return values


def _format_sizes(sizes):
    return ", ".join(f"{key}={value}" for key, value in sizes.items())


def _tqdm_write(message):
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)
