"""Random search of learning rates with Optuna, in memory and in SQLite."""

import json
import math

import pytest

from slstm.cli import main
from slstm.meta.search import tune_learning_rate

from .conftest import TINY_ARGS


def _distance_from_3e3(lr):
    return (math.log10(lr) - math.log10(3e-3)) ** 2


def test_tune_learning_rate_finds_minimum_in_memory():
    result = tune_learning_rate(_distance_from_3e3, low=1e-5, high=1e-1, n_trials=30)
    assert len(result.trials) == 30
    assert all(1e-5 <= lr <= 1e-1 for lr, _ in result.trials)
    assert result.best_score == min(score for _, score in result.trials)
    assert result.best_score == _distance_from_3e3(result.best_lr)
    assert abs(math.log10(result.best_lr) - math.log10(3e-3)) < 0.5


def test_sqlite_study_resumes_missing_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    calls = []

    def objective(lr):
        calls.append(lr)
        return _distance_from_3e3(lr)

    first = tune_learning_rate(
        objective, low=1e-4, high=1e-2, n_trials=3, storage=storage, study_name="s"
    )
    assert len(calls) == 3
    assert len(first.trials) == 3
    # Asking for 5 runs only the two missing trials, with new learning rates.
    second = tune_learning_rate(
        objective, low=1e-4, high=1e-2, n_trials=5, storage=storage, study_name="s"
    )
    assert len(calls) == 5
    assert len(second.trials) == 5
    assert len(set(calls)) == 5
    assert second.best_score <= first.best_score


def test_non_finite_scores_lose():
    def objective(lr):
        return math.nan if lr > 1e-3 else lr

    result = tune_learning_rate(objective, low=1e-4, high=1e-2, n_trials=10, seed=1)
    assert result.best_lr <= 1e-3
    assert any(math.isinf(score) for _, score in result.trials)


def test_invalid_interval_is_rejected():
    with pytest.raises(ValueError, match="0 < low < high"):
        tune_learning_rate(_distance_from_3e3, low=1e-2, high=1e-3, n_trials=2)


def test_meta_train_search_picks_meta_lr(tmp_path):
    out = tmp_path / "run"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--search", "2",
                 "--search-episodes", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    record = json.loads((out / "search.json").read_text())
    assert len(record["trials"]) == 2
    assert (out / "search" / "study.db").is_file()
    chosen = json.loads((out / "config.json").read_text())["meta_lr"]
    best = min(record["trials"], key=lambda trial: trial["validation_loss"])
    assert chosen == record["best_meta_lr"] == best["meta_lr"]


def test_search_with_init_scores_final_networks(tmp_path):
    first = tmp_path / "first"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--validate-every",
                 "0", "--out", str(first)])  # fmt: skip
    assert code == 0
    out = tmp_path / "run"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--search", "2",
                 "--search-episodes", "2", "--init", str(first / "last.pt"),
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    record = json.loads((out / "search.json").read_text())
    # Every trial validates the shared starting weights first; a trial's score
    # must be its own final validation, not that shared starting value.
    for trial in record["trials"]:
        trial_dir = next((out / "search").glob(f"lr-{trial['meta_lr']:.4e}"))
        rows = [
            line.split(",")
            for line in (trial_dir / "metrics.csv").read_text().splitlines()[1:]
            if line.startswith("validation")
        ]
        assert [int(row[1]) for row in rows] == [0, 2]
        assert trial["validation_loss"] == pytest.approx(float(rows[-1][9]))


@pytest.mark.parametrize(
    "storage", ["nosuch://x", "not a url", "sqlite:////no/such/folder/study.db"]
)
def test_bad_storage_is_one_line_before_any_work(tmp_path, capsys, storage):
    out = tmp_path / "run"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--search", "1",
                 "--search-storage", storage, "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"--search-storage {storage!r} is not a usable Optuna storage" in err
    assert "Traceback" not in err
    assert not out.exists()
