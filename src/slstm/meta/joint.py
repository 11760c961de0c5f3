"""Joint mode: one network trained from scratch while its optimizer is meta-learned.

Meta-learning and learning happen along the same run: a single CNN is trained
for ``steps`` steps by the learned optimizer, and every ``T`` steps the update
networks take one meta-update on the meta-loss of those ``T`` steps (as in
:mod:`slstm.meta.unroll`). There are no episodes and no resets: the recurrent
state and the network's parameters carry over from one truncation to the next.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slstm.meta.config import MetaTrainConfig
from slstm.meta.io import atomic_write
from slstm.meta.trainer import MetaTrainer, evaluate_split

logger = logging.getLogger("slstm.meta")


@dataclass
class JointRecord:
    """One evaluation of the jointly trained network."""

    step: int
    train_loss: float
    test_loss: float
    test_error: float
    meta_steps: int
    seconds: float


def train_jointly(
    config: MetaTrainConfig,
    *,
    steps: int,
    eval_every: int = 100,
    initial_checkpoint: str | Path | None = None,
    on_record=None,
    data=None,
) -> tuple[MetaTrainer, list[JointRecord], bool]:
    """Train one network for ``steps`` steps, meta-updating every ``config.unroll``.

    Args:
        config: data, network, optimizer kind, unroll length, meta learning rate
            and so on; ``episodes``, ``horizon`` and validation are ignored.
        steps: optimizee steps of the one run.
        eval_every: steps between evaluations on the test split (0: only at the end).
        initial_checkpoint: start the update networks from this optimizer
            checkpoint (name or path) instead of a fresh zero-output network.
        on_record: called with each :class:`JointRecord` as it is made.
        data: an already loaded :class:`slstm.data.DataSplits` to reuse.

    Returns:
        ``(trainer, records, diverged)``; ``trainer.nets`` contains the update
        networks after the last meta-update.
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    config = config.replace(horizon=steps, episodes=1, validate_every=0)
    trainer = MetaTrainer(config, progress=False, data=data)
    if initial_checkpoint is not None:
        _load_initial_nets(trainer, initial_checkpoint)

    optimizee = trainer.start_episode(0)
    test_split = trainer.data.split("test")
    started = time.perf_counter()
    records: list[JointRecord] = []

    def record(train_loss: float) -> None:
        test_loss, test_error = evaluate_split(optimizee, test_split, trainer.device)
        entry = JointRecord(
            optimizee.step,
            train_loss,
            test_loss,
            test_error,
            trainer.counters.meta_steps,
            time.perf_counter() - started,
        )
        records.append(entry)
        if on_record is not None:
            on_record(entry)

    record(optimizee.initial_loss)
    next_evaluation = eval_every if eval_every else steps
    while optimizee.step < steps and not optimizee.diverged:
        length = min(config.unroll, steps - optimizee.step)
        grads, usable, result = trainer.truncation_gradients(optimizee, length)
        trainer.apply_meta_gradients(grads, usable)
        optimizee.detach_()
        trainer.counters.inner_steps += len(result.losses)
        if optimizee.diverged:
            logger.warning(
                "the network diverged at step %d (loss %s); joint training stopped",
                optimizee.step,
                result.losses[-1] if result.losses else math.nan,
            )
            break
        if optimizee.step >= next_evaluation or optimizee.step == steps:
            record(result.losses[-1])
            while next_evaluation <= optimizee.step:
                next_evaluation += eval_every if eval_every else steps
    return trainer, records, optimizee.diverged


def _load_initial_nets(trainer: MetaTrainer, name_or_path) -> None:
    from slstm.optim import load_checkpoint

    checkpoint = load_checkpoint(name_or_path, map_location=trainer.device)
    if tuple(checkpoint.config.inputs) != tuple(trainer.optimizer_config.inputs):
        raise ValueError(
            f"checkpoint {name_or_path} was trained with inputs "
            f"{checkpoint.config.inputs} but --optimizer {trainer.config.optimizer} "
            f"reads {trainer.optimizer_config.inputs}; pick the matching optimizer"
        )
    # The checkpoint's own networks replace the fresh ones (their sizes may
    # differ from the defaults), with a fresh meta-optimizer over them.
    trainer.optimizer_config = checkpoint.config
    trainer.nets = checkpoint.nets.to(trainer.device)
    trainer.meta_params = [p for p in trainer.nets.parameters() if p.requires_grad]
    trainer.meta_optimizer = torch.optim.Adam(
        trainer.meta_params, lr=trainer.config.meta_lr
    )


def save_joint_optimizer(trainer: MetaTrainer, path: Path, steps: int) -> Path:
    """Write the jointly meta-learned update networks as an optimizer checkpoint."""
    from slstm.optim import save_checkpoint

    provenance = trainer.provenance()
    provenance["created_by"] = "slstm train --joint"
    provenance["joint_steps"] = steps
    return atomic_write(
        path,
        lambda tmp: save_checkpoint(
            tmp, trainer.nets, trainer.optimizer_config, provenance
        ),
    )
