"""The learned optimizers of an experiment: shipped, given, or meta-trained here."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .presets import DISPLAY_NAMES, LEARNED
from .training import OptimizerFactory

DEFAULT_CHECKPOINTS = {"lstm": "lstm-fashion-mnist", "slstm": "slstm-fashion-mnist"}
# Used when a checkpoint's provenance does not name its meta-training horizon.
ASSUMED_META_HORIZON = 100


@dataclass
class LearnedSource:
    """A loaded learned optimizer: the update networks and where they came from."""

    checkpoint: object
    source: str
    note: str = ""


def learned_factory(name, source, multiplier, device):
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


def meta_horizon(learned):
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


def load_learned_optimizers(
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
            note = f"given with --{name}-checkpoint"
        elif config.meta_train or preset.requires_meta_train:
            path_or_name = meta_train_optimizer(
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
        log(f"{DISPLAY_NAMES[name]}: {path_or_name} ({note})")
    return sources


def meta_train_optimizer(
    name, config, preset, data_name, settings, out_dir, progress, log
):
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
