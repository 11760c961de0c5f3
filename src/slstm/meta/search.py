"""Random search of learning rates with Optuna.

The meta learning rate of the learned optimizers and the learning rates of the
baselines are chosen by random search on a log scale. Optuna's
:class:`~optuna.samplers.RandomSampler` draws the trials; its storage can be an
SQLite file (one machine, survives restarts) or any database URL Optuna accepts
(several machines working on one study, e.g. ``postgresql://...``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class TuningResult:
    """Outcome of :func:`tune_learning_rate`.

    Attributes:
        best_lr: the learning rate of the trial with the lowest finite score.
        best_score: that trial's score (lower is better).
        trials: ``(lr, score)`` of every finished trial in the study, in trial
            order, including those of earlier runs on the same storage; a
            failed or non-finite trial has score ``inf``.
    """

    best_lr: float
    best_score: float
    trials: list[tuple[float, float]] = field(default_factory=list)


def tune_learning_rate(
    objective: Callable[[float], float],
    *,
    low: float,
    high: float,
    n_trials: int,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
) -> TuningResult:
    """Minimise ``objective(lr)`` over ``lr`` drawn log-uniformly from [low, high].

    Args:
        objective: maps a learning rate to a score, lower is better (e.g. a
            validation loss). A non-finite score counts as ``inf``.
        low, high: the search interval, ``0 < low < high``.
        n_trials: trials to run in this call. With a persistent ``storage`` and
            ``study_name`` the study resumes: only the trials still missing to
            reach ``n_trials`` finished ones are run.
        seed: seed of the random sampler.
        storage: None keeps the study in memory; otherwise an Optuna storage URL,
            e.g. ``"sqlite:///search.db"``.
        study_name: the study's name in ``storage`` (default
            ``"learning-rate"``).

    Raises:
        ValueError: on an invalid interval or trial count, or when every trial
            returned a non-finite score.
    """
    import optuna

    if not (low > 0 and high > low and math.isfinite(high)):
        raise ValueError(
            f"the learning-rate interval must satisfy 0 < low < high, got "
            f"low={low!r}, high={high!r}"
        )
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name or "learning-rate",
        storage=storage,
        sampler=optuna.samplers.RandomSampler(seed=seed),
        direction="minimize",
        load_if_exists=True,
    )
    finished = [t for t in study.trials if t.state.is_finished()]
    remaining = n_trials - len(finished)
    if remaining > 0 and len(finished) > 0:
        # Re-seed so a resumed search does not redraw the learning rates that
        # earlier trials already tried.
        study.sampler = optuna.samplers.RandomSampler(seed=seed + len(finished))

    def optuna_objective(trial) -> float:
        lr = trial.suggest_float("lr", low, high, log=True)
        score = float(objective(lr))
        if not math.isfinite(score):
            logger.warning(
                "trial %d: lr %.3g gave a non-finite score", trial.number, lr
            )
            return math.inf
        logger.info("trial %d: lr %.3g score %.5g", trial.number, lr, score)
        return score

    if remaining > 0:
        study.optimize(optuna_objective, n_trials=remaining, catch=())

    trials = []
    for trial in study.trials:
        if trial.state.is_finished() and "lr" in trial.params:
            value = trial.value if trial.value is not None else math.inf
            trials.append((float(trial.params["lr"]), float(value)))
    scored = [(lr, score) for lr, score in trials if math.isfinite(score)]
    if not scored:
        raise ValueError(
            f"all {len(trials)} trials gave a non-finite score; widen or lower the "
            f"interval [{low:g}, {high:g}]"
        )
    best_lr, best_score = min(scored, key=lambda pair: pair[1])
    return TuningResult(best_lr=best_lr, best_score=best_score, trials=trials)


def check_storage(storage: str) -> None:
    """Raise ValueError unless Optuna can open ``storage``, before any work.

    Opening a new SQLite file creates it with Optuna's tables, as the search
    would.
    """
    import optuna

    try:
        optuna.storages.RDBStorage(storage)
    except Exception as error:  # SQLAlchemy raises several unrelated classes
        reason = str(error).splitlines()[0]
        raise ValueError(
            f"--search-storage {storage!r} is not a usable Optuna storage "
            f"({type(error).__name__}: {reason}); pass a database URL such as "
            "sqlite:///runs/search.db in a folder that exists, or leave it out "
            "to keep the study in the run's folder"
        ) from None


def search_meta_lr(config, *, context=None, device=None) -> tuple[float, list]:
    """Choose ``config.meta_lr`` by random search; return ``(best_lr, trials)``.

    Each of ``config.search`` trials meta-trains for ``config.search_episodes``
    episodes into ``<out>/search/lr-<value>`` and is scored by the validation
    loss of its final update networks. The study lives in
    ``config.search_storage`` (default: ``<out>/search/study.db``, SQLite), so an
    interrupted search resumes with the trials it had finished. Under
    ``torchrun`` rank 0 samples the learning rates and every rank takes part in
    each trial's meta-training.
    """
    import shutil
    from pathlib import Path

    from slstm.meta.distributed import DistributedContext
    from slstm.meta.io import atomic_write_json
    from slstm.meta.trainer import MetaTrainer, load_task_data
    from slstm.utils import resolve_device

    device = device if device is not None else resolve_device(config.device)
    context = context or DistributedContext(device=device)
    search_dir = Path(config.out) / "search"
    storage = config.search_storage
    if storage is None:
        storage = f"sqlite:///{(search_dir / 'study.db').resolve()}"
    if context.is_main:
        search_dir.mkdir(parents=True, exist_ok=True)
    data = load_task_data(config, device)
    trial_episodes = config.search_episodes

    def run_trial(lr: float) -> float:
        trial_out = search_dir / f"lr-{lr:.4e}"
        if context.is_main and trial_out.exists():
            shutil.rmtree(trial_out)  # left by an interrupted trial
        context.barrier()
        trial_config = config.replace(
            meta_lr=lr,
            episodes=trial_episodes,
            validate_every=trial_episodes,
            checkpoint_every=0,
            search=0,
            out=str(trial_out),
        )
        trainer = MetaTrainer(
            trial_config, context=context, device=device, progress=False, data=data
        )
        # The final networks, not best.pt: a run started with --init also
        # validates its starting weights, which every trial shares.
        return trainer.run().final_validation_loss

    if context.is_main:

        def objective(lr: float) -> float:
            context.broadcast_object(lr)
            return run_trial(lr)

        try:
            result = tune_learning_rate(
                objective,
                low=config.search_low,
                high=config.search_high,
                n_trials=config.search,
                seed=config.seed,
                storage=storage,
                study_name=f"meta-lr-{config.optimizer}",
            )
        finally:
            context.broadcast_object(None)  # releases the other ranks
        atomic_write_json(
            {
                "best_meta_lr": result.best_lr,
                "best_validation_loss": result.best_score,
                "trials": [
                    {"meta_lr": lr, "validation_loss": s} for lr, s in result.trials
                ],
                "storage": storage,
            },
            Path(config.out) / "search.json",
        )
        logger.info(
            "search chose meta_lr %.3g (validation loss %.4f) from %d trials",
            result.best_lr,
            result.best_score,
            len(result.trials),
        )
        best_lr, trials = result.best_lr, result.trials
    else:
        while (lr := context.broadcast_object(None)) is not None:
            run_trial(lr)
        best_lr, trials = None, []
    best_lr = context.broadcast_object(best_lr)
    return float(best_lr), trials
