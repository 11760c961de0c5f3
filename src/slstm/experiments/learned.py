"""The learned optimizers of an experiment: shipped, given, or meta-trained here."""

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .presets import DISPLAY_NAMES, LEARNED, META_TRAIN_OPTIONS
from .training import OptimizerFactory

DEFAULT_CHECKPOINTS = {name: f"{name}-fashion-mnist" for name in LEARNED}
# Used when a checkpoint's provenance does not name its meta-training horizon.
ASSUMED_META_HORIZON = 100
# Keys under which a checkpoint's provenance stores its meta-training options:
# `slstm meta-train` writes "meta_train_config"; "configuration" is the name
# slstm.optim.save_checkpoint documents.
CONFIG_KEYS = ("meta_train_config", "configuration")


@dataclass
class LearnedSource:
    """A loaded learned optimizer and where it came from.

    Attributes:
        checkpoint: ``slstm.optim.Checkpoint`` (update networks, config, provenance).
        source: shipped name or file path it was loaded from.
        note: how it was chosen (shipped default, option, meta-trained here).
    """

    checkpoint: object
    source: str
    note: str = ""


def learned_factory(name, source, multiplier, device):
    """Return an ``OptimizerFactory`` for a loaded learned optimizer.

    ``multiplier`` multiplies the update that the networks output, the learned
    counterpart of a learning rate. Each ``UpdateNet`` applies its own
    ``output_scale``, so a multiplier other than 1 works on a scaled copy of the
    networks and leaves the loaded ones untouched.
    """
    from slstm.optim import LearnedOptimizer

    checkpoint = source.checkpoint
    nets = checkpoint.nets.to(device)
    base = checkpoint.config

    def make(model, rate):
        scaled_nets = nets
        if rate != 1.0:
            scaled_nets = copy.deepcopy(nets)
            for net in scaled_nets.values():
                net.output_scale = net.output_scale * rate
        config = dataclasses.replace(base, output_scale=base.output_scale * rate)
        return LearnedOptimizer(model, scaled_nets, config)

    method = base.curvature_method if base.needs_curvature else None
    return OptimizerFactory(
        name=name, make=make, lr=multiplier, curvature_method=method
    )


def trained_on(provenance):
    """Return ``{"net", "net_sizes", "data", "batch_size", "horizon"}`` found in
    a checkpoint's meta-training options, or {} if the provenance has none.

    ``horizon`` is the longest episode, over a curriculum (``horizon_schedule``)
    too.
    """
    for key in CONFIG_KEYS:
        options = provenance.get(key)
        if isinstance(options, dict):
            found = {
                field: options[field]
                for field in ("net", "net_sizes", "data", "batch_size", "horizon")
                if field in options
            }
            schedule = options.get("horizon_schedule")
            if isinstance(found.get("horizon"), int) and isinstance(schedule, list):
                steps = [pair[1] for pair in schedule if isinstance(pair, list)]
                found["horizon"] = max([found["horizon"], *steps])
            return found
    return {}


def network_note(provenance, model_name, model_sizes, batch_size, data=None):
    """Return a sentence when the checkpoint was meta-trained on another setting.

    ``data`` is the data set's name here; None leaves the data set unchecked.
    """
    trained = trained_on(provenance)
    if not trained:
        return "its provenance does not name the network it was meta-trained on"
    differences = []
    if data is not None and "data" in trained and trained["data"] != data:
        differences.append(f"data {trained['data']} (here {data})")
    if "net" in trained and trained["net"] != model_name:
        differences.append(f"network {trained['net']} (here {model_name})")
    sizes = trained.get("net_sizes")
    if isinstance(sizes, dict) and trained.get("net") == model_name:
        # Either side may list only the sizes it changed. The network's defaults
        # fill in the rest, so {} and {"channels": 64} compare equal for mnist_cnn.
        defaults = _default_sizes(model_name)
        then = {**defaults, **sizes}
        here = {**defaults, **(model_sizes or {})}
        keys = [k for k in {**then, **here} if then.get(k) != here.get(k)]
        if keys:
            differences.append(
                f"sizes {_format_sizes(then, keys)} (here {_format_sizes(here, keys)})"
            )
    if "batch_size" in trained and trained["batch_size"] != batch_size:
        differences.append(f"minibatch {trained['batch_size']} (here {batch_size})")
    if not differences:
        return ""
    return "meta-trained on a different setting: " + ", ".join(differences)


def _default_sizes(model_name):
    from slstm.models import model_sizes

    try:
        return model_sizes(model_name)
    except ValueError:
        return {}


def _format_sizes(sizes, keys):
    return ",".join(f"{key}={sizes.get(key, '(unset)')}" for key in keys)


def _episode_length(meta_config) -> str:
    """Return ``"100"``, or ``"100, then 200, 400"`` under a horizon curriculum."""
    schedule = meta_config.horizon_schedule or []
    if not schedule:
        return str(meta_config.horizon)
    return f"{meta_config.horizon}, then " + ", ".join(str(s) for _, s in schedule)


def meta_horizon(learned):
    """Return ``(steps, source)``, the longest meta-training horizon found."""
    found = {}
    for name, source in learned.items():
        horizon = trained_on(source.checkpoint.provenance or {}).get("horizon")
        if isinstance(horizon, int):
            found[name] = horizon
    if not found:
        return ASSUMED_META_HORIZON, (
            f"not in the checkpoints' provenance, {ASSUMED_META_HORIZON} assumed"
        )
    steps = max(found.values())
    names = ", ".join(f"{DISPLAY_NAMES[n]} {h}" for n, h in found.items())
    return steps, f"from the checkpoints' provenance: {names}"


def load_learned_optimizers(config, preset, out_dir, device, *, progress, log):
    """Load or meta-train each learned optimizer among ``config.optimizers``.

    Returns ``{name: LearnedSource}``. An explicit checkpoint option wins; else
    ``--meta-train`` (or a preset that requires it) meta-trains; else the
    shipped checkpoint is loaded.
    """
    from slstm.optim import load_checkpoint

    given = {
        "lstm": config.lstm_checkpoint,
        "slstm": config.slstm_checkpoint,
        "slstm-hutchinson": config.slstm_hutchinson_checkpoint,
    }
    for name, checkpoint in given.items():
        if checkpoint is not None and name not in config.optimizers:
            log(
                f"warning: --{name}-checkpoint {checkpoint} is not used, because "
                f"{name} is not among --optimizers"
            )
    sources = {}
    for name in [name for name in LEARNED if name in config.optimizers]:
        if given[name] is not None:
            path_or_name = given[name]
            note = f"given with --{name}-checkpoint"
        elif config.meta_train or preset.requires_meta_train:
            path_or_name = meta_train_optimizer(
                name,
                config,
                preset,
                out_dir,
                progress=progress,
                log=log,
            )
            note = "meta-trained by this experiment"
        else:
            path_or_name = DEFAULT_CHECKPOINTS[name]
            note = "shipped checkpoint"
        checkpoint = load_checkpoint(path_or_name, map_location=device)
        _check_variant(name, checkpoint, path_or_name)
        sources[name] = LearnedSource(checkpoint, str(path_or_name), note)
        log(f"{DISPLAY_NAMES[name]}: {path_or_name} ({note})")
    return sources


def _check_variant(name, checkpoint, path_or_name):
    """Raise ValueError when a checkpoint cannot serve as optimizer ``name``."""
    options = META_TRAIN_OPTIONS[name]
    reads_hessian = "hessian" in checkpoint.config.inputs
    if reads_hessian != (options["optimizer"] == "slstm"):
        reads = (
            "also reads the diagonal Hessian"
            if options["optimizer"] == "slstm"
            else "reads only the gradient"
        )
        raise ValueError(
            f"{path_or_name} contains networks that read {checkpoint.config.inputs}, "
            f"but {DISPLAY_NAMES[name]} {reads}; pass a checkpoint meta-trained "
            f"with --optimizer {options['optimizer']}"
        )
    method = options.get("curvature_method")
    if method is not None and checkpoint.config.curvature_method != method:
        raise ValueError(
            f"{path_or_name} was meta-trained on the "
            f"{checkpoint.config.curvature_method} diagonal Hessian, but "
            f"{DISPLAY_NAMES[name]} reads the {method} one; pass a checkpoint "
            f"meta-trained with --curvature-method {method}"
        )


def meta_train_config(name, config, preset, out_dir):
    """Return the ``MetaTrainConfig`` that ``--meta-train`` uses for ``name``.

    Starts from ``--meta-config`` (a JSON file such as the config.json that
    `slstm meta-train` writes) or from the preset's task: its meta-training
    network, classes and the experiment's data, minibatch size and seed. The
    experiment's ``--meta-episodes`` and ``--meta-horizon`` override either.
    """
    from slstm.meta import MetaTrainConfig

    meta = preset.meta_train
    if config.meta_config is not None:
        base = MetaTrainConfig.load(config.meta_config)
    else:
        base = MetaTrainConfig(
            data=config.data,
            data_dir=config.data_dir,
            classes=meta.classes,
            net=meta.model,
            net_sizes=dict(meta.model_sizes),
            episodes=meta.episodes,
            batch_size=config.batch_size,
            seed=config.first_seed,
            curvature_method=config.curvature_method,
            device=config.device,
        )
    changes = {
        **META_TRAIN_OPTIONS[name],
        "out": str(Path(out_dir) / "meta-train" / name),
    }
    if config.meta_episodes is not None:
        changes["episodes"] = config.meta_episodes
    if config.meta_horizon is not None:
        # A fixed horizon replaces any curriculum of the --meta-config file.
        changes["horizon"] = config.meta_horizon
        changes["horizon_schedule"] = None
        changes["unroll"] = min(base.unroll, config.meta_horizon)
    return base.replace(**changes)


def meta_train_optimizer(name, config, preset, out_dir, *, progress, log):
    """Meta-train optimizer ``name``; return the path of its best checkpoint.

    The best checkpoint is the one with the lowest meta-validation loss; when no
    validation ran, the last one.
    """
    from slstm.meta import meta_train

    meta_config = meta_train_config(name, config, preset, out_dir)
    length = _episode_length(meta_config)
    log(
        f"meta-training {DISPLAY_NAMES[name]}: {meta_config.episodes} episodes of "
        f"{length} steps on {meta_config.net} ({meta_config.data}, "
        f"classes {meta_config.classes or 'all'}) into {meta_config.out}"
    )
    result = meta_train(meta_config, progress=progress)
    return str(result.best_checkpoint or result.last_checkpoint)
