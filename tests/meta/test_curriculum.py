"""Horizon curricula and validation at several horizons."""

import math

import pytest
import torch

from slstm.cli import main
from slstm.meta import MetaTrainConfig, MetaTrainer, meta_train
from slstm.meta.config import parse_horizon_schedule, parse_step_counts
from slstm.meta.metrics import read_metrics
from slstm.optim import load_checkpoint

from .conftest import TINY_ARGS


def test_horizon_at_follows_schedule():
    config = MetaTrainConfig(horizon=100, horizon_schedule=[[2, 200], [5, 400]])
    assert [config.horizon_at(e) for e in range(7)] == [
        100,
        100,
        200,
        200,
        200,
        400,
        400,
    ]
    assert config.truncations_at(0) == 5
    assert config.truncations_at(5) == 20
    assert config.truncations_per_episode == 5
    assert MetaTrainConfig(horizon=30).horizon_at(1000) == 30


def test_schedule_from_episode_zero_replaces_horizon():
    config = MetaTrainConfig(horizon=100, horizon_schedule=[[0, 50]])
    assert config.horizon_at(0) == 50


@pytest.mark.parametrize(
    "schedule, message",
    [
        ([[5, 200], [2, 400]], "episodes must increase"),
        ([[2, 200], [2, 400]], "episodes must increase"),
        ([[-1, 200]], "episodes must be ints >= 0"),
        ([[2, 0]], "horizon_schedule steps must be a positive int"),
        ([[2, 200, 3]], r"\[episode, steps\] pairs"),
        ([], r"\[episode, steps\] pairs"),
        (7, r"\[episode, steps\] pairs"),
    ],
)
def test_config_rejects_bad_schedules(schedule, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig(horizon_schedule=schedule)


def test_parse_horizon_schedule():
    assert parse_horizon_schedule("20:200, 60:400") == [[20, 200], [60, 400]]
    # Errors name the command-line form, not the JSON one.
    for text in ("20-200", "a:200", "20:", "", "20:200,", "60:400,20:200", "5:0"):
        with pytest.raises(ValueError, match="EPISODE:STEPS pairs"):
            parse_horizon_schedule(text)


def test_parse_step_counts():
    assert parse_step_counts("100, 1000") == [100, 1000]
    for text in ("100,", "100,,1000", "1000,100", "0", "5.5", "abc", ""):
        with pytest.raises(ValueError, match="increasing positive step counts"):
            parse_step_counts(text)


def test_huge_horizon_counts_truncations_exactly():
    steps = 10**400
    config = MetaTrainConfig(unroll=3, horizon_schedule=[[1, steps]])
    assert config.truncations_at(1) == steps // 3 + 1
    assert config.longest_horizon == steps


def test_one_validation_horizon_is_stored_as_int():
    assert MetaTrainConfig(validation_horizon=[12]) == MetaTrainConfig(
        validation_horizon=12
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ([1000, 100], "increasing step counts"),
        ([100, 100], "increasing step counts"),
        ([], "increasing step counts"),
        ([100, 0], "must be a positive int"),
        (0, "must be a positive int"),
    ],
)
def test_config_rejects_bad_validation_horizons(value, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig(validation_horizon=value)


def test_validation_horizons_default_and_json_round_trip():
    assert MetaTrainConfig(horizon=30).validation_horizons == [30]
    assert MetaTrainConfig(validation_horizon=7).validation_horizons == [7]
    config = MetaTrainConfig(
        validation_horizon=(100, 1000), horizon_schedule=[(3, 200)]
    )
    assert config.validation_horizon == [100, 1000]
    assert MetaTrainConfig.from_json(config.to_json()) == config


def test_episodes_follow_the_schedule(tiny_config):
    config = tiny_config(
        episodes=4, horizon=6, unroll=5, horizon_schedule=[[1, 10], [3, 14]]
    )
    trainer = MetaTrainer(config, progress=False)
    steps = [trainer.train_episode(episode).inner_steps for episode in range(4)]
    assert steps == [6, 10, 10, 14]
    # 2 + 2 + 2 + 3 truncations, one meta-update each.
    assert trainer.counters.meta_steps == 9


def _perturb(trainer):
    # Fresh update networks output zero; make them move the parameters.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trainer.meta_params:
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


def test_validation_score_is_the_mean_over_horizons(tiny_config):
    trainer = MetaTrainer(tiny_config(validation_horizon=[4, 10]), progress=False)
    _perturb(trainer)
    by_horizon = trainer.validate_at([4, 10])
    loss, error = trainer.validate()
    assert loss == pytest.approx((by_horizon[0][0] + by_horizon[1][0]) / 2)
    assert error == pytest.approx((by_horizon[0][1] + by_horizon[1][1]) / 2)
    # Each horizon scores the same run at another point, not a fresh run.
    assert by_horizon[0][0] != by_horizon[1][0]
    assert trainer.last_validation_by_horizon == by_horizon
    # A single horizon gives exactly validate_at's score.
    single = MetaTrainer(tiny_config(validation_horizon=10), progress=False)
    _perturb(single)
    assert single.validate() == by_horizon[1]


def test_best_checkpoint_records_each_horizon(tiny_config, caplog):
    config = tiny_config(episodes=2, validate_every=1, validation_horizon=[3, 8])
    with caplog.at_level("INFO", logger="slstm.meta"):
        result = meta_train(config, progress=False)
    # The log line gives each horizon's loss and error beside the mean.
    assert "% @3, " in caplog.text
    assert "% @8)" in caplog.text
    provenance = load_checkpoint(result.best_checkpoint).provenance
    scores = provenance["validation_by_horizon"]
    assert list(scores) == ["3", "8"]
    mean = (scores["3"]["loss"] + scores["8"]["loss"]) / 2
    assert math.isclose(provenance["best_validation_loss"], mean)
    rows = [r for r in read_metrics(result.out / "metrics.csv")]
    best_row = min(
        (r for r in rows if r["kind"] == "validation"),
        key=lambda r: float(r["validation_loss"]),
    )
    assert math.isclose(float(best_row["validation_loss"]), mean)


def test_validation_csv_keeps_each_horizon(tiny_config):
    config = tiny_config(episodes=2, validate_every=1, validation_horizon=[3, 8])
    result = meta_train(config, progress=False)
    means = {
        int(r["episode"]): float(r["validation_loss"])
        for r in read_metrics(result.out / "metrics.csv")
        if r["kind"] == "validation"
    }
    rows = read_metrics(result.out / "validation.csv")
    assert [(int(r["episode"]), int(r["steps"])) for r in rows] == [
        (1, 3), (1, 8), (2, 3), (2, 8)
    ]  # fmt: skip
    for episode, mean in means.items():
        losses = [float(r["loss"]) for r in rows if int(r["episode"]) == episode]
        assert math.isclose(sum(losses) / 2, mean)
    # Both step counts were scored on the same run, so they differ.
    assert rows[0]["loss"] != rows[1]["loss"]


def test_resume_drops_validation_rows_after_the_checkpoint(tiny_config):
    config = tiny_config(
        episodes=2, validate_every=1, checkpoint_every=2, validation_horizon=[3, 8]
    )
    result = meta_train(config, progress=False)
    log = result.out / "validation.csv"
    before = log.read_text()
    # A row written after the last checkpoint, as if the run had been killed.
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("3,99,3,0.5,0.1\n")
    trainer = MetaTrainer(config.replace(episodes=3), progress=False)
    trainer._resume()
    assert log.read_text() == before


def test_cli_takes_schedule_and_horizons(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "3", "--validate-every",
                 "3", "--horizon-schedule", "1:8,2:12",
                 "--validation-horizon", "4,9", "--out", str(out)])  # fmt: skip
    assert code == 0
    config = MetaTrainConfig.load(out / "config.json")
    assert config.horizon_schedule == [[1, 8], [2, 12]]
    assert config.validation_horizon == [4, 9]
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["inner_steps"]) for r in rows if r["kind"] == "episode"] == [
        10, 18, 30
    ]  # fmt: skip
    assert "best checkpoint" in capsys.readouterr().out


def test_resume_keeps_scores_by_horizon(tiny_config):
    config = tiny_config(
        episodes=2, validate_every=1, checkpoint_every=1, validation_horizon=[3, 8]
    )
    result = meta_train(config, progress=False)
    saved = load_checkpoint(result.last_checkpoint).provenance
    assert list(saved["validation_by_horizon"]) == ["3", "8"]
    trainer = MetaTrainer(config.replace(episodes=3), progress=False)
    trainer._resume()
    assert (
        trainer.provenance()["validation_by_horizon"] == saved["validation_by_horizon"]
    )


def test_no_scores_by_horizon_before_validation(tiny_config):
    trainer = MetaTrainer(tiny_config(validation_horizon=[3, 8]), progress=False)
    assert trainer.provenance()["validation_by_horizon"] == {}


@pytest.mark.parametrize(
    "option, value",
    [
        ("--horizon-schedule", "20-200"),
        ("--horizon-schedule", "20:200,"),
        ("--validation-horizon", "1000,100"),
        ("--validation-horizon", "5,12,"),
    ],
)
def test_cli_rejects_bad_values_by_name(option, value, capsys):
    with pytest.raises(SystemExit):
        main(["meta-train", *TINY_ARGS, option, value])
    assert option in capsys.readouterr().err
