"""Learning-rate search for the baselines: stratified Optuna random search.

Eight purely random log-uniform draws can leave whole decades untried: one
experiment drew four of eight learning rates in the lowest sixth of the range.
So the range is cut into ``n_trials`` equal parts on the log scale, and
``slstm.meta.search.tune_learning_rate`` draws one trial in each part.
"""

import math
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    """Outcome of ``stratified_search``.

    Attributes:
        best_lr: learning rate of the trial with the lowest finite score.
        best_score: that score.
        trials: ``(lr, score)`` of every trial in stratum order; a diverged
            trial has score ``inf``.
        all_diverged: True when no trial had a finite score; ``best_lr`` is
            then the low end of the range and ``best_score`` is ``inf``.
    """

    best_lr: float
    best_score: float
    trials: list = field(default_factory=list)
    all_diverged: bool = False


def strata(low, high, count):
    """Return ``count`` consecutive intervals splitting [low, high] evenly in log."""
    ratio = high / low
    edges = [low * ratio ** (i / count) for i in range(count + 1)]
    edges[-1] = high
    return list(zip(edges[:-1], edges[1:], strict=True))


def stratified_search(objective, *, low, high, n_trials, seed):
    """Minimise ``objective(lr)`` with one log-uniform trial per stratum.

    Args:
        objective: maps a learning rate to a score, lower is better; a
            non-finite score marks a diverged trial.
        low, high: the search range, ``0 < low < high``.
        n_trials: number of strata, and of trials.
        seed: seed of the first stratum's sampler; stratum ``i`` uses ``seed + i``.

    When every trial diverges, the result falls back to ``low``, the smallest
    learning rate of the range, with ``all_diverged`` set, so an experiment
    keeps going and its records mark the rate as untuned.

    Raises:
        ValueError: when the range is invalid.
    """
    from slstm.meta.search import tune_learning_rate

    if not 0 < low < high:
        raise ValueError(
            f"invalid search range: need 0 < low < high, got {low}, {high}"
        )
    trials = []

    def recorded(lr):
        score = float(objective(lr))
        trials.append((lr, score if math.isfinite(score) else math.inf))
        return score

    for index, (start, stop) in enumerate(strata(low, high, n_trials)):
        count = len(trials)
        try:
            tune_learning_rate(
                recorded, low=start, high=stop, n_trials=1, seed=seed + index
            )
        except ValueError:
            # tune_learning_rate raises when its only trial diverged; that trial
            # is recorded here. Any other error is re-raised.
            if len(trials) != count + 1 or math.isfinite(trials[-1][1]):
                raise
    finite = [(lr, score) for lr, score in trials if math.isfinite(score)]
    if not finite:
        return SearchResult(
            best_lr=low, best_score=math.inf, trials=trials, all_diverged=True
        )
    best_lr, best_score = min(finite, key=lambda pair: pair[1])
    return SearchResult(best_lr=best_lr, best_score=best_score, trials=trials)
