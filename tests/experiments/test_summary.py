"""Summary statistics and tables, on synthetic curves with known results."""

import math

import numpy as np
import pytest

from slstm.experiments.presets import DISPLAY_NAMES, OPTIMIZER_NAMES
from slstm.experiments.stats import aligned_curves, mean_std, steps_to_reach
from slstm.experiments.summary import (
    format_horizon_table,
    format_main_table,
    format_sensitivity_table,
    horizon_outcomes,
    render_summary,
    summarize,
    summary_table,
)


def test_mean_std_uses_sample_std_and_skips_nan():
    mean, std, n = mean_std([1.0, 2.0, 3.0, math.nan])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)
    assert n == 3


def test_mean_std_of_one_value_has_zero_std():
    assert mean_std([4.0]) == (4.0, 0.0, 1)


def test_aligned_curves_stop_at_first_divergence(record):
    runs = record.runs_of("main", "sgd")
    steps, values = aligned_curves(runs, "train_loss")
    # Seed 2 diverges at step 7, so only the evaluations at 0 and 5 remain.
    assert steps == [0, 5]
    assert values.shape == (3, 2)


def test_steps_to_reach_known_curve(record):
    adam = record.runs_of("main", "adam")
    target = float(np.mean([run.train_loss_at(20) for run in adam]))
    # SLSTM's mean loss is 2.3 exp(-0.08 t) + 0.01, below Adam's final
    # 2.3 exp(-1) + 0.01 from t = 12.5 on; the next evaluation is step 15.
    assert steps_to_reach(record.runs_of("main", "slstm"), target) == 15
    assert steps_to_reach(adam, target) == 20
    assert steps_to_reach(record.runs_of("main", "lstm"), target) is None
    assert steps_to_reach(adam, math.nan) is None


def test_summary_rows_per_optimizer(record):
    rows = {row.optimizer: row for row in summarize(record)}
    assert list(rows) == list(OPTIMIZER_NAMES)
    assert rows["slstm"].steps_to_reference == 15
    assert rows["lstm"].steps_to_reference is None
    assert rows["sgd"].diverged_at == [7]
    assert rows["sgd"].train_loss[2] == 2
    assert rows["adam"].train_loss[0] == pytest.approx(2.3 * math.exp(-1) + 0.01)
    assert rows["adam"].lr_source == "tuned"
    assert rows["slstm"].lr_source == "checkpoint"
    assert rows["adam"].ms_per_step == pytest.approx(2.0)


def test_main_table_has_row_per_optimizer(record):
    table = format_main_table(record).splitlines()
    assert len(table) == 2 + len(OPTIMIZER_NAMES)
    for line, name in zip(table[2:], OPTIMIZER_NAMES, strict=True):
        assert line.startswith(f"| {DISPLAY_NAMES[name]} |")
    sgd = table[2]
    assert "1/3 (steps 7)" in sgd
    assert "(2 of 3 seeds)" in sgd
    assert "not reached in 20" in table[2 + OPTIMIZER_NAMES.index("lstm")]


def test_sensitivity_table_includes_main_runs(record):
    table = format_sensitivity_table(record).splitlines()
    assert table[0] == "| optimizer | ×0.1 | ×1 | ×10 |"
    rmsprop = next(line for line in table if line.startswith("| RMSprop |"))
    assert "diverged 2/2" in rmsprop


def test_horizon_outcomes_count_divergence_and_stall(record):
    lstm = record.runs_of("horizon", "lstm")
    assert horizon_outcomes(lstm, 5, 50) == {"diverged": 1, "stalled": 0}
    flat = record.runs_of("horizon", "adam")
    for run in flat:
        run.train_loss = [1.0 for _ in run.train_loss]
    assert horizon_outcomes(flat, 5, 50) == {"diverged": 0, "stalled": 2}
    assert "| LSTM | 2 | 1/2 | 0/2 |" in format_horizon_table(record)


def test_render_summary_sections(record):
    text = render_summary(record)
    for heading in (
        "## Results at step 20",
        "## Learning rates",
        "## Learned optimizers",
        "## Learning-rate sensitivity",
        "## Horizon",
    ):
        assert heading in text
    assert "scale: **small**" in text
    assert "slstm-fashion-mnist" in text
    assert "horizon: 5" in text


def test_render_summary_without_studies(make_record):
    text = render_summary(make_record(studies=False))
    assert "## Horizon" not in text
    assert "## Learning-rate sensitivity" not in text


def test_summary_table_as_data(record):
    table = {row["optimizer"]: row for row in summary_table(record)}
    assert list(table) == list(OPTIMIZER_NAMES)
    assert table["slstm"]["steps_to_reference"] == 15
    assert table["sgd"]["finished_seeds"] == 2
    assert table["sgd"]["diverged_at"] == [7]
    assert table["adam"]["reference"] == "adam"
    assert table["adam"]["train_loss_mean"] == pytest.approx(2.3 * math.exp(-1) + 0.01)


def _one_seed(record):
    record.runs = [run for run in record.runs if run.seed == 0]
    record.setup["seeds"] = [0]
    return record


def test_one_seed_summary_claims_no_spread(make_record):
    text = render_summary(_one_seed(make_record(studies=False)))
    table = text.split("## Results")[1].split("\n\n")[1]
    assert "±" not in table
    assert "1 seed (0), no spread" in text
    assert "over 1 seeds" not in text


def test_several_seeds_summary_shows_spread(record):
    text = render_summary(record)
    assert "±" in text.split("## Results")[1]
    assert "sample standard deviation over 3 seeds (0, 1, 2)" in text


def test_summary_shortens_nested_provenance(record):
    record.checkpoints["slstm"]["provenance"].update(
        {
            "meta_train_config": {"net": "mnist_cnn", "meta_lr": 3e-4},
            "validation_by_horizon": {"100": {"loss": 0.8, "error": 0.3}},
            "output_scale_calibration": {
                "chosen_output_scale": 0.1,
                "validation_tasks": 5,
                "trials": [{"output_scale": 0.075}, {"output_scale": 0.1}],
            },
            "weight_average": {"sources": [{"episode": 10}, {"episode": 20}]},
        }
    )
    text = render_summary(record)
    assert "  - meta_train_config: recorded in results.json" in text
    assert "meta_lr" not in text
    assert "  - validation_by_horizon: 100 steps: loss 0.8" in text
    assert "output scale 0.1 chosen from [0.075, 0.1] on 5 validation" in text
    assert "  - weight_average: mean of 2 checkpoints, episodes [10, 20]" in text
    assert "  - episodes: 3" in text


def test_reference_reached_at_step_zero():
    from types import SimpleNamespace

    from slstm.experiments.summary import _format_reach

    adam = SimpleNamespace(optimizer="adam", steps_to_reference=0)
    assert _format_reach(adam, 100) == "0 (reference)"
    adam.steps_to_reference = None
    assert _format_reach(adam, 100) == "–"


def test_evaluation_steps_name_the_last_step():
    from slstm.experiments.summary import _evaluation_steps

    assert _evaluation_steps({"eval_every": 10, "steps": 100}) == "every 10 steps"
    assert _evaluation_steps({"eval_every": 10, "steps": 2}) == (
        "every 10 steps and at step 2"
    )
