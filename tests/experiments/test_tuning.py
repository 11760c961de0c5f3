"""Stratified learning-rate search: coverage, diverged trials, errors."""

import math

import pytest

from slstm.experiments.tuning import strata, stratified_search


def test_strata_split_log_range_evenly():
    parts = strata(1e-4, 1e-1, 3)
    assert len(parts) == 3
    for (start, stop), (low, high) in zip(
        parts, [(1e-4, 1e-3), (1e-3, 1e-2), (1e-2, 1e-1)], strict=True
    ):
        assert start == pytest.approx(low)
        assert stop == pytest.approx(high)
    assert parts[-1][1] == 1e-1


def test_one_trial_per_stratum():
    result = stratified_search(lambda lr: 0.0, low=1e-4, high=1.0, n_trials=4, seed=0)
    assert len(result.trials) == 4
    for (lr, _), (start, stop) in zip(result.trials, strata(1e-4, 1.0, 4), strict=True):
        assert start <= lr <= stop


def test_best_trial_is_lowest_score():
    result = stratified_search(
        lambda lr: abs(math.log10(lr) + 2), low=1e-4, high=1.0, n_trials=4, seed=0
    )
    best_lr, best_score = min(result.trials, key=lambda trial: trial[1])
    assert result.best_lr == best_lr
    assert result.best_score == best_score
    # The score is lowest at 1e-2, the edge between the second and third strata.
    assert 1e-3 <= result.best_lr <= 1e-1


def test_diverged_trials_score_inf():
    result = stratified_search(
        lambda lr: math.nan if lr > 1e-2 else lr, low=1e-4, high=1.0, n_trials=4, seed=0
    )
    scores = [score for _, score in result.trials]
    assert scores[-1] == math.inf
    assert scores[-2] == math.inf
    assert result.best_lr < 1e-3


def test_all_diverged_falls_back_to_low_end():
    result = stratified_search(
        lambda lr: math.nan, low=1e-3, high=1.0, n_trials=2, seed=0
    )
    assert result.all_diverged
    assert result.best_lr == 1e-3
    assert result.best_score == math.inf
    assert [score for _, score in result.trials] == [math.inf, math.inf]


def test_objective_error_propagates():
    def objective(lr):
        raise ValueError("broken objective")

    with pytest.raises(ValueError, match="broken objective"):
        stratified_search(objective, low=1e-3, high=1.0, n_trials=2, seed=0)
