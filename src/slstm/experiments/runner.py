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

import copy
import dataclasses
import datetime
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import records
from .plots import plot_results
from .presets import (
    BASELINES,
    DISPLAY_NAMES,
    LEARNED,
    LR_SEARCH_RANGES,
    OPTIMIZER_NAMES,
    STUDIES,
    TRANSFER_MODELS,
    get_preset,
    resolve_scale,
)
from .summary import format_main_table, render_summary
from .training import EvalSets, OptimizerFactory, evaluation_steps, train_run

DEFAULT_CHECKPOINTS = {"lstm": "lstm-fashion-mnist", "slstm": "slstm-fashion-mnist"}
DEFAULT_LR_MULTIPLIERS = (0.1, 0.3, 1.0, 3.0, 10.0)
# Used when a checkpoint's provenance does not name its meta-training horizon.
ASSUMED_META_HORIZON = 100
# Tuning trains from its own seed, so no evaluation seed takes part in tuning.
TUNING_SEED_OFFSET = 10_000
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
        eval_every: steps between evaluations of the training subset and test set.
        device: "auto", "cpu" or "cuda".
        optimizers: registry names of the optimizers to compare.
        lstm_checkpoint, slstm_checkpoint: shipped checkpoint name or file path
            of the learned optimizers (None: the shipped Fashion-MNIST ones, or
            meta-training where the preset requires it).
        meta_train: meta-train LSTM and SLSTM first instead of loading checkpoints.
        meta_episodes: meta-training episodes (None: the preset's).
        tune_trials: random-search trials per baseline (None: the scale's; 0:
            no tuning, the registry's default learning rates).
        learning_rates: fixed learning rates by optimizer name; those are not tuned.
        curvature_method: diagonal Hessian of DiagonalNewton.
        studies: extra studies to run, from ``STUDIES``.
        study_seeds: seeds of the extra studies (None: the scale's), the first
            ones of the main seeds.
        lr_multipliers: factors of the learning-rate sensitivity study.
        horizon_factor: the horizon study runs this many times the
            meta-training horizon.
        model_sizes: size keywords overriding the scale's network sizes.
        train_eval_size, test_eval_size: evaluation subset sizes (None: the
            scale's; 0 for the test set means every test image).
        image_size: side of image-folder images in pixels (None: the preset's).
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
    eval_every: int = 5
    device: str = "auto"
    optimizers: tuple = OPTIMIZER_NAMES
    lstm_checkpoint: str | None = None
    slstm_checkpoint: str | None = None
    meta_train: bool = False
    meta_episodes: int | None = None
    tune_trials: int | None = None
    learning_rates: dict = field(default_factory=dict)
    curvature_method: str = "becker-lecun"
    studies: tuple = STUDIES
    study_seeds: int | None = None
    lr_multipliers: tuple = DEFAULT_LR_MULTIPLIERS
    horizon_factor: int = 10
    model_sizes: dict | None = None
    train_eval_size: int | None = None
    test_eval_size: int | None = None
    image_size: int | None = None

    def validate(self):
        """Raise ``ValueError`` naming the first invalid option and its fix."""
        get_preset(self.preset)
        for name in ("steps", "seeds", "eval_every", "horizon_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("batch_size", "meta_episodes", "study_seeds", "train_eval_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"{name} must be a positive int or None, got {value!r}"
                )
        if self.tune_trials is not None and self.tune_trials < 0:
            raise ValueError(f"tune_trials must be >= 0, got {self.tune_trials}")
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

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class ExperimentResult:
    """What ``run_experiment`` returns.

    Attributes:
        out_dir: the output directory.
        record: every measurement (``records.ExperimentRecord``).
        files: paths of the files written.
    """

    out_dir: Path
    record: records.ExperimentRecord
    files: list


@dataclass
class LearnedSource:
    """A loaded learned optimizer: the update networks and where they came from."""

    checkpoint: object
    source: str
    note: str = ""


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
    config.validate()
    log = log or _tqdm_write
    started = time.perf_counter()
    timing = {}

    from slstm.models import build_model, count_parameters
    from slstm.utils import resolve_device

    preset = get_preset(config.preset)
    device = resolve_device(config.device)
    scale, scale_reason = resolve_scale(config.scale, device)
    settings = preset.settings(scale)
    data_name = config.data or preset.data
    model_name = preset.model
    if preset.name == "transfer":
        model_name = TRANSFER_MODELS.get(data_name, preset.model)
    model_sizes = dict(
        settings.model_sizes if config.model_sizes is None else config.model_sizes
    )
    batch_size = config.batch_size or settings.batch_size
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    study_seeds = seeds[: config.study_seeds or settings.study_seeds]
    tune_trials = (
        settings.tune_trials if config.tune_trials is None else config.tune_trials
    )

    out_dir = _output_dir(config.out, preset.name, scale)
    records.write_config(_config_dict(config, scale, scale_reason, device), out_dir)
    log(f"experiment {preset.name}: scale {scale} ({scale_reason})")
    log(f"writing to {out_dir}")

    # Data and the fixed evaluation subsets.
    phase = time.perf_counter()
    splits = _load_data(preset, config, data_name, settings, device)
    eval_sets = EvalSets(
        loss_split=_fixed_subset(
            splits.train, config.train_eval_size or settings.train_eval_size
        ),
        error_split=_fixed_subset(splits.test, _test_eval_size(config, settings)),
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
            "dir": str(config.data_dir or "default location"),
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
    learned = _learned_sources(
        config, preset, data_name, settings, device, out_dir, progress, log
    )
    checkpoints = {
        name: {
            "source": source.source,
            "note": source.note,
            "provenance": dict(getattr(source.checkpoint, "provenance", {}) or {}),
        }
        for name, source in learned.items()
    }
    timing["learned optimizers"] = time.perf_counter() - phase

    context = _RunContext(
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
    learning_rates = _choose_learning_rates(config, tune_trials, context, progress, log)
    timing["tuning"] = time.perf_counter() - phase

    # The comparison.
    phase = time.perf_counter()
    runs = _main_runs(config, seeds, learning_rates, context, progress)
    timing["comparison"] = time.perf_counter() - phase

    if "lr-sensitivity" in config.studies:
        phase = time.perf_counter()
        setup["lr_sensitivity"] = {
            "seeds": study_seeds,
            "multipliers": sorted(set(config.lr_multipliers) | {1.0}),
        }
        runs += _sensitivity_runs(
            config, study_seeds, learning_rates, context, progress
        )
        timing["learning-rate sensitivity"] = time.perf_counter() - phase

    if "horizon" in config.studies:
        names = [n for n in ("adam", "lstm", "slstm") if n in config.optimizers]
        if any(name in LEARNED for name in names):
            phase = time.perf_counter()
            meta_horizon, source = _meta_horizon(learned)
            setup["horizon"] = {
                "seeds": study_seeds,
                "factor": config.horizon_factor,
                "meta_horizon": meta_horizon,
                "meta_horizon_source": source,
                "steps": config.horizon_factor * meta_horizon,
                "optimizers": names,
            }
            runs += _horizon_runs(
                config, setup["horizon"], names, learning_rates, context, progress
            )
            timing["horizon"] = time.perf_counter() - phase
        else:
            log("horizon study skipped: no learned optimizer among --optimizers")

    timing["total"] = time.perf_counter() - started
    record = records.ExperimentRecord(
        config=config.to_dict(),
        setup=setup,
        learning_rates=learning_rates,
        checkpoints=checkpoints,
        runs=runs,
        timing=timing,
    )
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


@dataclass
class _RunContext:
    """What every training run of one experiment shares."""

    model: torch.nn.Module
    new_model: object
    splits: object
    batch_size: int
    device: torch.device
    eval_sets: EvalSets
    learned: dict
    curvature_method: str
    _initial_states: dict = field(default_factory=dict)

    def initial_state(self, seed):
        """Return the initialisation of ``seed``, the same for every optimizer."""
        if seed not in self._initial_states:
            torch.manual_seed(seed)
            self._initial_states[seed] = copy.deepcopy(
                self.new_model().to(self.device).state_dict()
            )
        return self._initial_states[seed]

    def batches(self, seed, split=None):
        """Return the minibatch stream of ``seed``, the same for every optimizer."""
        from slstm.data import batch_iterator

        generator = torch.Generator().manual_seed(seed)
        return batch_iterator(
            self.splits.train if split is None else split,
            self.batch_size,
            generator=generator,
            device=self.device,
        )

    def optimizer(self, name, lr):
        """Return the ``OptimizerFactory`` of ``name`` at learning rate ``lr``."""
        if name in LEARNED:
            return _learned_factory(name, self.learned[name], lr, self.device)
        from slstm.optim import OPTIMIZERS

        spec = OPTIMIZERS[name]
        method = self.curvature_method if spec.needs_curvature else None
        return OptimizerFactory(
            name=name,
            make=lambda model, rate: spec.make(model.parameters(), rate),
            lr=lr,
            curvature_method=method,
        )

    def run(self, study, name, seed, lr, steps, eval_steps, multiplier=1.0, bar=None):
        on_step = None
        if bar is not None:

            def on_step(step, loss):
                if step % 10 == 0:
                    bar.set_postfix_str(
                        f"{DISPLAY_NAMES[name]} seed {seed} step {step} loss {loss:.3f}"
                    )

        return train_run(
            study=study,
            seed=seed,
            model=self.model,
            initial_state=self.initial_state(seed),
            optimizer=self.optimizer(name, lr),
            batches=self.batches(seed),
            steps=steps,
            eval_steps=eval_steps,
            eval_sets=self.eval_sets,
            device=self.device,
            lr_multiplier=multiplier,
            on_step=on_step,
        )


def _learned_factory(name, source, multiplier, device):
    from slstm.optim import LearnedOptimizer, param_groups_by_kind

    checkpoint = source.checkpoint
    nets = checkpoint.nets.to(device)
    base = checkpoint.config

    def make(model, rate):
        # The multiplier scales the update the networks output.
        config = dataclasses.replace(base, output_scale=base.output_scale * rate)
        return LearnedOptimizer(param_groups_by_kind(model), nets, config)

    method = base.curvature_method if "hessian" in base.inputs else None
    return OptimizerFactory(
        name=name, make=make, lr=multiplier, curvature_method=method
    )


def _choose_learning_rates(config, tune_trials, context, progress, log):
    """Return the learning-rate record of every optimizer, tuning where asked."""
    from tqdm.auto import tqdm

    chosen = {}
    to_tune = []
    for name in config.optimizers:
        if name in LEARNED:
            chosen[name] = {"lr": 1.0, "source": "checkpoint"}
        elif name in config.learning_rates:
            chosen[name] = {
                "lr": float(config.learning_rates[name]),
                "source": "option",
            }
        elif tune_trials == 0:
            from slstm.optim import OPTIMIZERS

            chosen[name] = {
                "lr": float(OPTIMIZERS[name].default_lr),
                "source": "default",
            }
        else:
            to_tune.append(name)
    if not to_tune:
        return chosen
    if context.splits.validation is None:
        raise ValueError("tuning needs a validation split; it is empty")

    from slstm.meta.search import tune_learning_rate

    seed = config.first_seed + TUNING_SEED_OFFSET
    bar = tqdm(
        total=len(to_tune) * tune_trials,
        desc="tuning",
        unit="trial",
        disable=not progress,
    )
    validation_sets = EvalSets(loss_split=context.splits.validation)
    for name in to_tune:

        def objective(lr, name=name):
            run = train_run(
                study="tuning",
                seed=seed,
                model=context.model,
                initial_state=context.initial_state(seed),
                optimizer=context.optimizer(name, lr),
                batches=context.batches(seed),
                steps=config.steps,
                eval_steps=[config.steps],
                eval_sets=validation_sets,
                device=context.device,
            )
            bar.update(1)
            bar.set_postfix_str(f"{DISPLAY_NAMES[name]} lr {lr:.3g}")
            return math.inf if run.diverged else run.train_loss[-1]

        low, high = LR_SEARCH_RANGES[name]
        result = tune_learning_rate(
            objective, low=low, high=high, n_trials=tune_trials, seed=seed
        )
        chosen[name] = {
            "lr": result.best_lr,
            "source": "tuned",
            "search_range": [low, high],
            "steps": config.steps,
            "best_score": result.best_score,
            "trials": [list(trial) for trial in result.trials],
        }
        log(
            f"tuned {DISPLAY_NAMES[name]}: lr {result.best_lr:.4g} "
            f"(validation loss {result.best_score:.4f}, {len(result.trials)} trials)"
        )
    bar.close()
    return chosen


def _main_runs(config, seeds, learning_rates, context, progress):
    from tqdm.auto import tqdm

    eval_steps = evaluation_steps(config.steps, config.eval_every)
    runs = []
    bar = tqdm(
        total=len(seeds) * len(config.optimizers),
        desc="comparison",
        unit="run",
        disable=not progress,
    )
    # Seeds outside, so an interrupted experiment has every optimizer on the
    # seeds it finished.
    for seed in seeds:
        for name in config.optimizers:
            runs.append(
                context.run(
                    "main",
                    name,
                    seed,
                    learning_rates[name]["lr"],
                    config.steps,
                    eval_steps,
                    bar=bar,
                )
            )
            bar.update(1)
    bar.close()
    return runs


def _sensitivity_runs(config, seeds, learning_rates, context, progress):
    from tqdm.auto import tqdm

    # ×1 is the main comparison on the same seeds, so it is not run again.
    multipliers = sorted(m for m in set(config.lr_multipliers) if m != 1.0)
    eval_steps = evaluation_steps(config.steps, config.eval_every)
    runs = []
    bar = tqdm(
        total=len(seeds) * len(config.optimizers) * len(multipliers),
        desc="learning-rate sensitivity",
        unit="run",
        disable=not progress,
    )
    for seed in seeds:
        for name in config.optimizers:
            for multiplier in multipliers:
                lr = learning_rates[name]["lr"] * multiplier
                runs.append(
                    context.run(
                        "lr-sensitivity",
                        name,
                        seed,
                        lr,
                        config.steps,
                        eval_steps,
                        multiplier,
                        bar,
                    )
                )
                bar.update(1)
    bar.close()
    return runs


def _horizon_runs(config, horizon, names, learning_rates, context, progress):
    from tqdm.auto import tqdm

    steps = horizon["steps"]
    # About 50 evaluations per run, one of them at the meta-training horizon.
    eval_steps = evaluation_steps(
        steps, max(config.eval_every, steps // 50), extra=[horizon["meta_horizon"]]
    )
    runs = []
    bar = tqdm(
        total=len(horizon["seeds"]) * len(names),
        desc="horizon",
        unit="run",
        disable=not progress,
    )
    for seed in horizon["seeds"]:
        for name in names:
            runs.append(
                context.run(
                    "horizon",
                    name,
                    seed,
                    learning_rates[name]["lr"],
                    steps,
                    eval_steps,
                    bar=bar,
                )
            )
            bar.update(1)
    bar.close()
    return runs


def _meta_horizon(learned):
    """Return ``(steps, source)``, the longest meta-training horizon found."""
    found = {}
    for name, source in learned.items():
        horizon = _find_horizon(getattr(source.checkpoint, "provenance", {}) or {})
        if horizon is not None:
            found[name] = horizon
    if not found:
        return ASSUMED_META_HORIZON, (
            f"not in the checkpoints' provenance, {ASSUMED_META_HORIZON} assumed"
        )
    steps = max(found.values())
    names = ", ".join(f"{DISPLAY_NAMES[n]} {h}" for n, h in found.items())
    return steps, f"from the checkpoints' provenance: {names}"


def _find_horizon(provenance):
    for key in ("horizon", "meta_horizon"):
        if isinstance(provenance.get(key), int):
            return provenance[key]
    for value in provenance.values():
        if isinstance(value, dict):
            found = _find_horizon(value)
            if found is not None:
                return found
    return None


def _learned_sources(
    config, preset, data_name, settings, device, out_dir, progress, log
):
    """Load or meta-train each learned optimizer among ``config.optimizers``."""
    from slstm.optim import load_checkpoint

    wanted = [name for name in LEARNED if name in config.optimizers]
    given = {"lstm": config.lstm_checkpoint, "slstm": config.slstm_checkpoint}
    sources = {}
    for name in wanted:
        if given[name] is not None:
            path_or_name = given[name]
            note = ""
        elif config.meta_train or preset.requires_meta_train:
            path_or_name = _meta_train(
                name, config, preset, data_name, settings, out_dir, progress, log
            )
            note = "meta-trained by this experiment"
        else:
            path_or_name = DEFAULT_CHECKPOINTS[name]
            note = "shipped checkpoint"
        checkpoint = load_checkpoint(path_or_name, map_location=device)
        sources[name] = LearnedSource(
            checkpoint=checkpoint, source=str(path_or_name), note=note
        )
        log(f"{DISPLAY_NAMES[name]}: {note or 'checkpoint'} {path_or_name}")
    return sources


def _meta_train(name, config, preset, data_name, settings, out_dir, progress, log):
    """Meta-train optimizer ``name`` as the preset says; return the checkpoint path."""
    from slstm.meta import MetaTrainConfig, meta_train

    meta = preset.meta_train
    meta_config = MetaTrainConfig(
        optimizer=name,
        data=data_name,
        data_dir=config.data_dir,
        classes=meta.classes,
        net=meta.model,
        net_sizes=dict(meta.model_sizes),
        episodes=config.meta_episodes or meta.episodes,
        batch_size=config.batch_size or settings.batch_size,
        seed=config.first_seed,
        out=str(Path(out_dir) / "meta-train" / name),
        curvature_method=config.curvature_method,
        device=config.device,
    )
    log(
        f"meta-training {DISPLAY_NAMES[name]}: {meta_config.episodes} episodes on "
        f"{meta.model} ({data_name}, classes {meta.classes or 'all'})"
    )
    result = meta_train(meta_config, progress=progress)
    return str(result.best_checkpoint)


def _load_data(preset, config, data_name, settings, device):
    from slstm.data import load_dataset

    kwargs = {}
    if data_name == "imagefolder":
        kwargs["image_size"] = config.image_size or preset.image_size
    return load_dataset(
        data_name,
        config.data_dir,
        validation=settings.validation_size,
        seed=SPLIT_SEED,
        device=device,
        **kwargs,
    )


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


def _test_eval_size(config, settings):
    if config.test_eval_size is None:
        return settings.test_eval_size
    return config.test_eval_size or None


def _output_dir(out, preset_name, scale):
    if out is not None:
        path = Path(out)
        if (path / records.RESULTS_FILE).exists():
            raise FileExistsError(
                f"{path} already holds an experiment (results.json); pass a new "
                "directory with --out or remove the old one"
            )
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


def _config_dict(config, scale, scale_reason, device):
    values = config.to_dict()
    values["resolved"] = {
        "scale": scale,
        "scale_reason": scale_reason,
        "device": str(device),
    }
    return values


def _format_sizes(sizes):
    return ", ".join(f"{key}={value}" for key, value in sizes.items())


def _tqdm_write(message):
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)


def command_line(argv=None):
    """Return the command line as one shell-quoted string."""
    argv = sys.argv if argv is None else argv
    return " ".join(shlex.quote(arg) for arg in argv)
