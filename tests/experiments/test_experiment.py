"""End to end: `slstm experiment` on tiny generated IDX data with tiny checkpoints."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from slstm.cli import main
from slstm.experiments import ExperimentConfig, compare_with_csv, run_experiment
from slstm.experiments.presets import DISPLAY_NAMES, OPTIMIZER_NAMES, resolve_scale

IMAGE_SIDE = 16
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META_HORIZON = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Write four gzipped IDX files of 16x16 images whose class sets the pattern."""
    from slstm.data.idx import write_idx

    directory = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    prototypes = rng.uniform(0, 255, size=(10, IMAGE_SIDE, IMAGE_SIDE))
    for prefix, count in (("train", 300), ("t10k", 100)):
        labels = np.arange(count) % 10
        noise = rng.normal(0, 60, size=(count, IMAGE_SIDE, IMAGE_SIDE))
        images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Save LSTM, SLSTM and SLSTM-Hutchinson checkpoints with random read-outs."""
    from slstm.optim import LearnedOptimizerConfig, create_update_nets, save_checkpoint

    directory = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, preset, method in (
        ("lstm", "lstm", "becker-lecun"),
        ("slstm", "slstm", "becker-lecun"),
        ("slstm-hutchinson", "slstm", "hutchinson"),
    ):
        config = LearnedOptimizerConfig.preset(
            preset, hidden_size=4, output_scale=0.01, curvature_method=method
        )
        torch.manual_seed(1)
        nets = create_update_nets(config)
        # A zero read-out (the initialisation) would make the optimizer a no-op.
        with torch.no_grad():
            for parameter in nets.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
        provenance = {
            "configuration": {"net": "mnist_cnn", "horizon": META_HORIZON},
            "dataset": "generated in the test",
        }
        paths[name] = save_checkpoint(
            directory / f"{name}.pt", nets, config, provenance
        )
    return paths


def tiny_config(data_dir, checkpoints, out, **overrides):
    def given(name):
        return str(checkpoints[name]) if checkpoints.get(name) else None

    values = dict(
        preset="fashion-mnist",
        scale="small",
        data_dir=str(data_dir),
        out=str(out),
        steps=6,
        seeds=2,
        eval_every=2,
        device="cpu",
        batch_size=16,
        lstm_checkpoint=given("lstm"),
        slstm_checkpoint=given("slstm"),
        slstm_hutchinson_checkpoint=given("slstm-hutchinson"),
        tune_trials=2,
        study_seeds=1,
        lr_multipliers=(0.5, 2.0),
        horizon_factor=2,
        model_sizes={"channels": 3, "hidden": 8},
        validation_size=60,
        train_eval_size=64,
        test_eval_size=0,
    )
    values.update(overrides)
    return ExperimentConfig(**values)


@pytest.fixture(scope="module")
def experiment(data_dir, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment") / "run"
    return run_experiment(tiny_config(data_dir, checkpoints, out), progress=False)


def test_every_optimizer_runs(experiment):
    record = experiment.record
    assert record.optimizers("main") == list(OPTIMIZER_NAMES)
    for run in record.runs_of("main"):
        assert run.steps == list(range(1, 7)) or run.diverged
        assert run.eval_steps[0] == 0


def test_learned_optimizers_move_loss(experiment):
    for name in ("lstm", "slstm", "slstm-hutchinson"):
        for run in experiment.record.runs_of("main", name):
            assert run.train_loss[-1] != run.train_loss[0]


def test_output_files_exist(experiment):
    names = {path.name for path in experiment.out_dir.iterdir()}
    expected = {
        "config.json",
        "results.json",
        "curves.csv",
        "summary.md",
        "loss.png",
        "test_error.png",
        "lr_sensitivity.png",
        "horizon.png",
    }
    assert expected <= names
    config = json.loads((experiment.out_dir / "config.json").read_text())
    # Recorded with the values that ran, not the "scale's default" placeholders.
    assert config["scale"] == "small"
    assert config["eval_every"] == 2
    assert config["study_seeds"] == 1
    # The horizon study defaults to every seed of the comparison.
    assert config["horizon_seeds"] == 2
    assert config["model_sizes"] == {"channels": 3, "hidden": 8}
    assert "no CUDA" in config["scale_reason"] or "requested" in config["scale_reason"]


def test_json_matches_csv(experiment):
    out = experiment.out_dir
    from slstm.experiments import load_results

    record = load_results(out)
    assert compare_with_csv(record, out / "curves.csv") == []
    # Independent of compare_with_csv: every JSON loss appears in its CSV row.
    with open(out / "curves.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    data = json.loads((out / "results.json").read_text())
    for run in data["runs"]:
        mine = {
            int(row["step"]): row
            for row in rows
            if row["study"] == run["study"]
            and row["optimizer"] == run["optimizer"]
            and int(row["seed"]) == run["seed"]
            and float(row["lr_multiplier"]) == float(run["lr_multiplier"])
        }
        for step, loss in zip(run["eval_steps"], run["train_loss"], strict=True):
            assert float(mine[step]["train_loss"]) == float(loss)
        for step, loss in zip(run["steps"], run["minibatch_loss"], strict=True):
            assert float(mine[step]["minibatch_loss"]) == pytest.approx(
                float(loss), nan_ok=True
            )


def test_plots_are_png(experiment):
    for name in ("loss.png", "test_error.png", "lr_sensitivity.png", "horizon.png"):
        path = experiment.out_dir / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.load()
            assert image.size[0] > 100


def test_summary_has_row_per_optimizer(experiment):
    text = (experiment.out_dir / "summary.md").read_text()
    for name in OPTIMIZER_NAMES:
        assert f"| {DISPLAY_NAMES[name]} |" in text
    assert "scale: **small**" in text
    assert "dataset: generated in the test" in text
    stored = json.loads((experiment.out_dir / "results.json").read_text())["summary"]
    assert [row["optimizer"] for row in stored] == list(OPTIMIZER_NAMES)


def test_same_start_and_batches_within_seed(experiment):
    record = experiment.record
    for seed in (0, 1):
        runs = [run for run in record.runs_of("main") if run.seed == seed]
        # Step 0 scores the shared initialisation; step 1's minibatch loss is
        # measured before any update, on the shared first minibatch.
        assert len({run.train_loss[0] for run in runs}) == 1
        assert len({run.minibatch_loss[0] for run in runs}) == 1
    first = record.runs_of("main", "adam")
    assert first[0].train_loss[0] != first[1].train_loss[0]


def test_tuned_learning_rates_recorded(experiment):
    rates = experiment.record.learning_rates
    for name in ("sgd", "rmsprop", "adam", "diagonal-newton"):
        assert rates[name]["source"] == "tuned"
        assert len(rates[name]["trials"]) == 2
        low, high = rates[name]["search_range"]
        assert low <= rates[name]["lr"] <= high
        assert rates[name]["lr"] in [trial[0] for trial in rates[name]["trials"]]


def test_studies_ran(experiment):
    record = experiment.record
    sensitivity = record.runs_of("lr-sensitivity")
    assert {run.lr_multiplier for run in sensitivity} == {0.5, 2.0}
    assert len(sensitivity) == 2 * len(OPTIMIZER_NAMES)
    for name in ("lstm", "slstm", "slstm-hutchinson"):
        low, high = sorted(
            (run for run in sensitivity if run.optimizer == name),
            key=lambda run: run.lr_multiplier,
        )
        assert low.train_loss[-1] != high.train_loss[-1]
    horizon = record.setup["horizon"]
    assert horizon["meta_horizon"] == META_HORIZON
    assert horizon["steps"] == 2 * META_HORIZON
    assert set(record.optimizers("horizon")) == {
        "adam",
        "lstm",
        "slstm",
        "slstm-hutchinson",
    }


def test_same_seed_same_numbers(experiment, data_dir, checkpoints, tmp_path):
    # The CLI with the same options must reproduce the API run exactly.
    args = [
        "experiment",
        "fashion-mnist",
        "--scale=small",
        f"--data-dir={data_dir}",
        f"--out={tmp_path / 'again'}",
        "--steps=6",
        "--seeds=2",
        "--eval-every=2",
        "--device=cpu",
        "--batch-size=16",
        f"--lstm-checkpoint={checkpoints['lstm']}",
        f"--slstm-checkpoint={checkpoints['slstm']}",
        f"--slstm-hutchinson-checkpoint={checkpoints['slstm-hutchinson']}",
        "--tune-trials=2",
        "--study-seeds=1",
        "--lr-multipliers=0.5,2",
        "--horizon-factor=2",
        "--model-sizes=channels=3,hidden=8",
        "--validation-size=60",
        "--train-eval-size=64",
        "--test-eval-size=0",
        "--quiet",
    ]
    assert main(args) == 0
    from slstm.experiments import load_results

    again = load_results(tmp_path / "again")
    first = experiment.record
    assert len(again.runs) == len(first.runs)
    for a, b in zip(first.runs, again.runs, strict=True):
        assert (a.study, a.optimizer, a.seed, a.lr) == (
            b.study,
            b.optimizer,
            b.seed,
            b.lr,
        )
        assert a.minibatch_loss == b.minibatch_loss
        assert a.train_loss == b.train_loss
        assert a.test_error == b.test_error


def test_divergence_recorded_others_continue(data_dir, checkpoints, tmp_path):
    config = tiny_config(
        data_dir,
        checkpoints,
        tmp_path / "diverge",
        optimizers=("sgd", "adam"),
        learning_rates={"sgd": 1e6, "adam": 1e-3},
        studies=(),
    )
    result = run_experiment(config, progress=False)
    sgd = result.record.runs_of("main", "sgd")
    adam = result.record.runs_of("main", "adam")
    for run in sgd:
        # A non-finite loss or gradient ends the run at that step.
        assert run.diverged
        assert run.diverged_at == run.steps[-1]
        assert run.diverged_at < 6
    assert all(len(run.steps) == 6 and not run.diverged for run in adam)
    summary = (result.out_dir / "summary.md").read_text()
    assert "2/2 (steps" in summary
    assert "set with --lr" in summary


def test_all_tuning_trials_diverged_falls_back(data_dir, checkpoints, tmp_path):
    config = tiny_config(
        data_dir,
        checkpoints,
        tmp_path / "all-diverged",
        optimizers=("sgd", "adam"),
        learning_rates={"adam": 1e-3},
        lr_ranges={"sgd": (1e5, 1e6)},
        studies=(),
        seeds=1,
    )
    result = run_experiment(config, progress=False)
    info = result.record.learning_rates["sgd"]
    assert info["all_diverged"]
    assert info["lr"] == 1e5
    assert all(score == float("inf") for _, score in info["trials"])
    summary = (result.out_dir / "summary.md").read_text()
    assert "all trials diverged" in summary
    assert len(result.record.runs_of("main", "adam")) == 1


def test_cli_lr_range_sets_search_range(capsys):
    import argparse

    from slstm.experiments.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["fashion-mnist", "--lr-range", "diagonal-newton=1e-6:1e-3"]
    )
    assert config_from_args(args).lr_ranges == {"diagonal-newton": (1e-6, 1e-3)}
    for bad in ("diagonal-newton=1e-2:1e-3", "lstm=1e-3:1e-2", "adam=0.1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["fashion-mnist", "--lr-range", bad])
        assert "NAME=LOW:HIGH" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--net-sizes", "--model-sizes"])
def test_cli_net_sizes_option_and_alias(option):
    import argparse

    from slstm.experiments.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["fashion-mnist", option, "channels=3,hidden=8"])
    assert config_from_args(args).model_sizes == {"channels": 3, "hidden": 8}


def test_diagonal_newton_default_range_stays_below_divergence():
    from slstm.experiments.presets import LR_SEARCH_RANGES

    # Rates above 1e-2 diverged for DiagonalNewton on the MNIST CNN.
    assert LR_SEARCH_RANGES["diagonal-newton"][1] <= 1e-2


def test_existing_results_kept(experiment, data_dir, checkpoints):
    config = tiny_config(data_dir, checkpoints, experiment.out_dir)
    with pytest.raises(FileExistsError, match="--out"):
        run_experiment(config, progress=False)


def test_auto_scale_follows_device():
    assert resolve_scale("auto", "cpu")[0] == "small"
    assert resolve_scale("auto", "cuda")[0] == "full"
    assert resolve_scale("full", "cpu") == ("full", "--scale full was requested")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps must be a positive int"),
        ({"optimizers": ("adamw",)}, "choose from"),
        ({"learning_rates": {"lstm": 0.1}}, "--lr-multipliers"),
        ({"studies": ("everything",)}, "unknown studies"),
        ({"preset": "svhn"}, "unknown preset"),
        ({"scale": "huge"}, "unknown scale"),
        ({"test_eval_size": -1}, "test_eval_size must be an int >= 0"),
        ({"image_size": 0}, "image_size must be a positive int or None, got 0"),
        ({"optimizers": ("adam", "sgd", "adam")}, "lists adam more than once"),
        ({"curvature_method": "nope"}, "curvature_method 'nope' is invalid"),
        ({"lr_multipliers": (1.0,)}, "lists no factor other than 1"),
        ({"horizon_factor": 1}, "horizon_factor must be at least 2"),
    ],
)
def test_invalid_config_names_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**overrides).validate()


def test_cli_existing_run_prints_one_line(experiment, capsys):
    status = main(["experiment", "fashion-mnist", "--out", str(experiment.out_dir)])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("slstm experiment: ")
    assert "\n" not in err
    assert "--out" in err


def test_cli_invalid_option_prints_one_line(capsys):
    status = main(["experiment", "fashion-mnist", "--steps", "0"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err == "slstm experiment: --steps must be a positive int, got 0"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--image-size", "0"], "--image-size must be a positive int or None, got 0"),
        (
            ["--device", "tpu"],
            "--device 'tpu' is invalid; use auto, cpu, cuda or cuda:N",
        ),
    ],
)
def test_cli_bad_values_print_one_line(capsys, options, message):
    status = main(["experiment", "fashion-mnist", *options])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err == f"slstm experiment: {message}"


def test_cli_rejects_repeated_optimizer(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "fashion-mnist", "--optimizers", "adam,adam"])
    assert "names adam more than once" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 100000}, "--batch-size 100000 is larger than the"),
        ({"validation_size": 100000}, "--validation-size 100000 does not fit the"),
    ],
)
def test_sizes_checked_before_tuning(
    data_dir, checkpoints, tmp_path, overrides, message
):
    out = tmp_path / "too-large"
    config = tiny_config(data_dir, checkpoints, out, **overrides)
    with pytest.raises(ValueError, match=message):
        run_experiment(config, progress=False)
    # A data problem is found before the output folder is made.
    assert not out.exists()


def test_default_validation_size_shrinks_to_fit(data_dir, checkpoints, tmp_path):
    out = tmp_path / "small-data"
    config = tiny_config(
        data_dir,
        checkpoints,
        out,
        validation_size=None,  # the small scale's 2000 > 300 training images
        optimizers=("adam",),
        studies=(),
        steps=2,
        seeds=1,
        tune_trials=1,
    )
    messages = []
    result = run_experiment(config, progress=False, log=messages.append)
    assert any("holding out 60 (a fifth) instead" in m for m in messages)
    assert result.record.setup["data"]["validation"] == 60
    saved = json.loads((out / "config.json").read_text())
    assert saved["validation_size"] == 60


def test_cli_lists_curvature_methods(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "fashion-mnist", "--curvature-method", "nope"])
    assert "choose from 'becker-lecun'" in capsys.readouterr().err


def test_cli_rejects_bad_learning_rate(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "fashion-mnist", "--lr", "adam"])
    assert "NAME=VALUE" in capsys.readouterr().err


def test_meta_train_option(data_dir, tmp_path):
    config = tiny_config(
        data_dir,
        {"lstm": None, "slstm": None},
        tmp_path / "meta",
        lstm_checkpoint=None,
        slstm_checkpoint=None,
        optimizers=("adam", "slstm"),
        learning_rates={"adam": 1e-3},
        studies=("horizon",),
        seeds=1,
        meta_train=True,
        meta_episodes=1,
        meta_horizon=4,
        model_sizes={"channels": 3, "hidden": 8},
    )
    result = run_experiment(config, progress=False)
    info = result.record.checkpoints["slstm"]
    assert info["source"].startswith(str(tmp_path / "meta" / "meta-train" / "slstm"))
    assert "meta-trained by this experiment" in info["note"]
    assert info["trained_on"]["horizon"] == 4
    # The horizon study reads the horizon from the new checkpoint's provenance.
    assert result.record.setup["horizon"]["steps"] == 2 * 4
    assert (tmp_path / "meta" / "meta-train" / "slstm" / "config.json").is_file()


def test_transfer_preset_five_classes(data_dir, tmp_path):
    config = tiny_config(
        data_dir,
        {"lstm": None, "slstm": None},
        tmp_path / "transfer",
        preset="transfer",
        lstm_checkpoint=None,
        slstm_checkpoint=None,
        optimizers=("sgd", "lstm"),
        learning_rates={"sgd": 0.01},
        studies=(),
        seeds=1,
        meta_episodes=1,
        meta_horizon=2,
        # Meta-training validates on 10 % of the 150 five-class images.
        batch_size=8,
    )
    result = run_experiment(config, progress=False)
    trained = result.record.checkpoints["lstm"]["trained_on"]
    assert trained["net"] == "small_cnn"
    meta_config = json.loads(
        (tmp_path / "transfer" / "meta-train" / "lstm" / "config.json").read_text()
    )
    assert meta_config["classes"] == 5
    assert result.record.setup["model"]["name"] == "mnist_cnn"
    assert result.record.setup["data"]["num_classes"] == 10
    assert (
        "network small_cnn (here mnist_cnn)"
        in result.record.checkpoints["lstm"]["note"]
    )


def test_studies_use_their_own_seeds(experiment):
    record = experiment.record
    assert {run.seed for run in record.runs_of("lr-sensitivity")} == {0}
    assert {run.seed for run in record.runs_of("horizon")} == {0, 1}
    assert record.setup["horizon"]["seeds"] == [0, 1]


def test_hutchinson_meta_trains_on_hutchinson(data_dir, tmp_path):
    config = tiny_config(
        data_dir,
        {},
        tmp_path / "meta",
        lstm_checkpoint=None,
        slstm_checkpoint=None,
        slstm_hutchinson_checkpoint=None,
        optimizers=("adam", "slstm-hutchinson"),
        learning_rates={"adam": 1e-3},
        studies=(),
        seeds=1,
        meta_train=True,
        meta_episodes=1,
        meta_horizon=2,
    )
    result = run_experiment(config, progress=False)
    folder = tmp_path / "meta" / "meta-train" / "slstm-hutchinson"
    meta_config = json.loads((folder / "config.json").read_text())
    assert meta_config["optimizer"] == "slstm"
    assert meta_config["curvature_method"] == "hutchinson"
    runs = result.record.runs_of("main", "slstm-hutchinson")
    assert len(runs) == 1
    assert runs[0].train_loss[-1] != runs[0].train_loss[0]


@pytest.mark.parametrize(
    ("name", "given", "message"),
    [
        (
            "slstm-hutchinson",
            "slstm",
            "meta-trained with --curvature-method hutchinson",
        ),
        ("slstm", "slstm-hutchinson", "--curvature-method becker-lecun"),
        ("slstm-hutchinson", "lstm", "meta-trained with --optimizer slstm"),
        ("slstm", "lstm", "meta-trained with --optimizer slstm"),
        ("lstm", "slstm", "reads only the gradient"),
    ],
)
def test_rejects_other_optimizers_checkpoint(
    data_dir, checkpoints, tmp_path, name, given, message
):
    option = f"{name.replace('-', '_')}_checkpoint"
    config = tiny_config(
        data_dir,
        checkpoints,
        tmp_path / "wrong",
        optimizers=(name,),
        studies=(),
        **{option: str(checkpoints[given])},
    )
    with pytest.raises(ValueError, match=message):
        run_experiment(config, progress=False)


def test_unused_checkpoint_option_is_reported(data_dir, checkpoints, tmp_path):
    lines = []
    config = tiny_config(
        data_dir,
        checkpoints,
        tmp_path / "unused",
        optimizers=("lstm",),
        studies=(),
        seeds=1,
    )
    run_experiment(config, progress=False, log=lines.append)
    assert any(
        "--slstm-hutchinson-checkpoint" in line and "not used" in line for line in lines
    )
