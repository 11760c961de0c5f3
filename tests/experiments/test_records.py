"""results.json and curves.csv: round trip, agreement and non-finite values."""

import csv
import json
import math

import pytest

from slstm.experiments.records import (
    CSV_COLUMNS,
    ExperimentRecord,
    compare_with_csv,
    load_results,
    write_results,
)


def test_json_round_trip(record, tmp_path):
    write_results(record, tmp_path)
    loaded = load_results(tmp_path)
    assert len(loaded.runs) == len(record.runs)
    for got, want in zip(loaded.runs, record.runs, strict=True):
        assert got.study == want.study
        assert got.optimizer == want.optimizer
        assert got.seed == want.seed
        assert got.eval_steps == want.eval_steps
        assert got.train_loss == want.train_loss
        assert got.test_error == want.test_error
        assert got.step_time_s == want.step_time_s
        assert got.diverged_at == want.diverged_at
        assert _same_floats(got.minibatch_loss, want.minibatch_loss)


def test_json_is_strict_with_nan_as_string(record, tmp_path):
    results_path, _ = write_results(record, tmp_path)
    text = results_path.read_text()
    # Standard JSON: no bare NaN or Infinity literal.
    data = json.loads(text, parse_constant=_reject_constant)
    diverged = [run for run in data["runs"] if run["diverged_at"] is not None]
    assert diverged
    assert diverged[0]["minibatch_loss"][-1] == "nan"
    assert data["learning_rates"]["sgd"]["trials"][1][1] == "inf"


def test_csv_matches_json(record, tmp_path):
    _, curves_path = write_results(record, tmp_path)
    assert compare_with_csv(load_results(tmp_path), curves_path) == []


def test_csv_rows_cover_every_value(record, tmp_path):
    _, curves_path = write_results(record, tmp_path)
    with open(curves_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    minibatch = [r for r in rows if r["minibatch_loss"] != ""]
    evaluated = [r for r in rows if r["train_loss"] != ""]
    assert len(minibatch) == sum(len(run.steps) for run in record.runs)
    assert len(evaluated) == sum(len(run.eval_steps) for run in record.runs)
    run = record.runs[0]
    first = [
        r
        for r in rows
        if (r["study"], r["optimizer"], r["seed"]) == ("main", run.optimizer, "0")
    ]
    assert [float(r["train_loss"]) for r in first if r["train_loss"]] == run.train_loss


def test_csv_edit_is_detected(record, tmp_path):
    _, curves_path = write_results(record, tmp_path)
    lines = curves_path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[5] = repr(float(fields[5]) + 1e-9)
    lines[3] = ",".join(fields)
    curves_path.write_text("\n".join(lines) + "\n")
    problems = compare_with_csv(record, curves_path)
    assert len(problems) == 1
    assert "row 4" in problems[0]


def test_csv_missing_row_is_detected(record, tmp_path):
    _, curves_path = write_results(record, tmp_path)
    lines = curves_path.read_text().splitlines()
    curves_path.write_text("\n".join(lines[:-1]) + "\n")
    problems = compare_with_csv(record, curves_path)
    assert any("rows in the CSV" in problem for problem in problems)


def test_load_missing_directory_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="slstm experiment"):
        load_results(tmp_path / "nothing")


def test_load_rejects_other_format(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="rerun the experiment"):
        load_results(tmp_path)


def test_record_from_json_keeps_setup(record):
    loaded = ExperimentRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert loaded.setup["data"]["train_eval"] == 64
    assert loaded.checkpoints["slstm"]["provenance"]["horizon"] == 5
    assert loaded.learning_rates["sgd"]["trials"][1][1] == "inf"


def _same_floats(a, b):
    return len(a) == len(b) and all(
        x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True)
    )


def _reject_constant(name):
    raise AssertionError(f"results.json contains the non-standard literal {name}")
