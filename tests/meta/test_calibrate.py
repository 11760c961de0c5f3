"""Output-scale calibration: scores match meta-training's validation, files load."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slstm.cli import main
from slstm.meta import meta_train
from slstm.meta.calibrate import calibrate_output_scale, score_baseline
from slstm.meta.metrics import read_metrics
from slstm.optim import load_checkpoint

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def trained(tmp_path, tiny_config):
    config = tiny_config(episodes=2, validate_every=2, out=str(tmp_path / "run"))
    meta_train(config, progress=False)
    return config, tmp_path / "run"


def test_score_at_own_scale_matches_run_validation(trained):
    config, out = trained
    rows = read_metrics(out / "metrics.csv")
    final = [r for r in rows if r["kind"] == "validation"][-1]
    result = calibrate_output_scale(out / "last.pt", [config.output_scale])
    assert result.trials[0].validation_loss == pytest.approx(
        float(final["validation_loss"]), rel=1e-12
    )


def test_best_scale_is_written_with_record(trained, tmp_path):
    _, out = trained
    scales = [0.05, 0.1, 0.4]
    result = calibrate_output_scale(
        out / "last.pt", scales, validation_tasks=2, out=tmp_path / "cal.pt"
    )
    losses = [t.validation_loss for t in result.trials]
    assert [t.output_scale for t in result.trials] == scales
    assert result.best_scale == scales[losses.index(min(losses))]
    written = load_checkpoint(tmp_path / "cal.pt")
    source = load_checkpoint(out / "last.pt")
    assert written.config.output_scale == result.best_scale
    for kind, net in written.nets.items():
        assert net.output_scale == result.best_scale
        for name, value in net.state_dict().items():
            assert torch.equal(value, source.nets[kind].state_dict()[name]), name
    record = written.provenance["output_scale_calibration"]
    assert record["chosen_output_scale"] == result.best_scale
    assert record["validation_tasks"] == 2
    assert [t["output_scale"] for t in record["trials"]] == scales
    # The source's commit and save time survive the new save's.
    assert record["source_git_commit"] == source.provenance["git_commit"]
    assert record["source_saved_at"] == source.provenance["saved_at"]
    assert record["source_saved_at"] is not None
    # The original provenance is kept beside the record.
    assert (
        written.provenance["meta_train_config"]
        == (source.provenance["meta_train_config"])
    )


def test_cli_prints_table_and_rejects_bad_scales(trained, tmp_path, capsys):
    _, out = trained
    code = main(["calibrate", str(out / "last.pt"), "--scales", "0.1,0.2",
                 "--validation-tasks", "1",
                 "--out", str(tmp_path / "c.pt")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| 0.1" in printed
    assert "| 0.2" in printed
    assert "(best)" in printed
    assert (tmp_path / "c.pt").is_file()
    code = main(["calibrate", str(out / "last.pt"), "--scales", "0.1,-1"])
    assert code == 2
    assert "positive numbers, got -1.0" in capsys.readouterr().err


def test_checkpoint_without_config_needs_one(tmp_path):
    from slstm.optim import LearnedOptimizerConfig, create_update_nets, save_checkpoint

    config = LearnedOptimizerConfig.preset("lstm")
    path = save_checkpoint(tmp_path / "bare.pt", create_update_nets(config), config, {})
    with pytest.raises(ValueError, match="records no usable meta_train_config"):
        calibrate_output_scale(path, [0.1])


def test_bad_out_is_rejected_before_scoring(trained, tmp_path):
    _, out = trained
    with pytest.raises(ValueError, match="exists and is not a regular file"):
        calibrate_output_scale(out / "last.pt", [0.1], out=tmp_path)
    with pytest.raises(ValueError, match="--out is empty"):
        calibrate_output_scale(out / "last.pt", [0.1], out="")


def test_duplicate_scales_are_rejected(trained):
    _, out = trained
    with pytest.raises(ValueError, match="must differ"):
        calibrate_output_scale(out / "last.pt", [0.1, 0.1])


def test_threads_override_run_config(trained):
    _, out = trained
    before = torch.get_num_threads()
    result = calibrate_output_scale(out / "last.pt", [0.1], threads=2)
    assert result.config.num_threads == 2
    assert torch.get_num_threads() == 2
    torch.set_num_threads(before)


def test_other_kinds_are_rejected(trained, tmp_path):
    from slstm.optim import create_update_nets, save_checkpoint

    _, out = trained
    source = load_checkpoint(out / "last.pt")
    config = dataclasses.replace(source.config, kinds=("fc",))
    nets = create_update_nets(config)
    path = save_checkpoint(tmp_path / "fc.pt", nets, config, source.provenance)
    with pytest.raises(ValueError, match="only checkpoints of the lstm or slstm"):
        calibrate_output_scale(path, [0.1])


def test_written_file_is_world_readable(trained, tmp_path):
    _, out = trained
    calibrate_output_scale(
        out / "last.pt", [0.1], validation_tasks=1, out=tmp_path / "c.pt"
    )
    assert (tmp_path / "c.pt").stat().st_mode & 0o044 == 0o044


def test_recalibration_keeps_previous_record(trained, tmp_path):
    _, out = trained
    calibrate_output_scale(
        out / "last.pt", [0.1, 0.2], validation_tasks=1, out=tmp_path / "a.pt"
    )
    calibrate_output_scale(
        tmp_path / "a.pt", [0.3], validation_tasks=1, out=tmp_path / "b.pt"
    )
    first = load_checkpoint(tmp_path / "a.pt").provenance["output_scale_calibration"]
    second = load_checkpoint(tmp_path / "b.pt").provenance["output_scale_calibration"]
    assert second["previous"] == first
    assert second["meta_train_config"]["data"] == "digits"


def test_validate_at_matches_separate_validations(trained):
    from slstm.meta import MetaTrainer

    config, out = trained
    trainer = MetaTrainer(config.replace(out=str(out / "scratch")), progress=False)
    both = trainer.validate_at([4, 10])
    trainer.config = config.replace(validation_horizon=4)
    assert trainer.validate() == both[0]
    trainer.config = config.replace(validation_horizon=10)
    assert trainer.validate() == both[1]


def test_score_is_mean_over_horizons(trained):
    _, out = trained
    result = calibrate_output_scale(
        out / "last.pt", [0.1, 0.3], validation_tasks=1, horizons=[4, 12]
    )
    for trial in result.trials:
        assert trial.horizons == [4, 12]
        assert len(trial.losses) == 2
        assert trial.validation_loss == pytest.approx(sum(trial.losses) / 2)
    with pytest.raises(ValueError, match="increasing positive step counts"):
        calibrate_output_scale(out / "last.pt", [0.1], horizons=[12, 4])


def _plain_sgd_losses(config, lr, steps):
    """Reference: p <- p - lr * g by hand on each validation network."""
    from slstm.meta import MetaTrainer
    from slstm.meta.trainer import evaluate_split

    trainer = MetaTrainer(config.replace(optimizer="lstm"), progress=False)
    losses = []
    for index in range(config.validation_tasks):
        task = trainer.sampler.validation_task(index)
        optimizee = trainer.make_optimizee(task, "validation")
        for _ in range(steps):
            optimizee.params = [
                p - lr * g
                for p, g in zip(optimizee.params, optimizee.current.grads, strict=True)
            ]
            optimizee.current = optimizee.evaluate(optimizee.params, keep_graph=False)
        split = trainer.data.split("validation", task.classes)
        losses.append(evaluate_split(optimizee, split, trainer.device)[0])
    return sum(losses) / len(losses)


def test_score_baseline_matches_hand_written_sgd(tiny_config):
    config = tiny_config(validation_tasks=2)
    scores = score_baseline("sgd", 0.05, config, [3, 7])
    assert scores[0][0] == pytest.approx(_plain_sgd_losses(config, 0.05, 3), rel=1e-5)
    assert scores[1][0] == pytest.approx(_plain_sgd_losses(config, 0.05, 7), rel=1e-5)
    # Several horizons score one run: the later one equals a run scored once.
    assert score_baseline("sgd", 0.05, config, [7])[0] == scores[1]
    assert scores[1][0] < scores[0][0]


def test_score_baseline_adam_and_divergence(tiny_config):
    config = tiny_config(validation_tasks=1)
    ((loss, error),) = score_baseline("adam", 1e-2, config, [5])
    assert 0 < loss < 10
    assert 0 <= error <= 1
    assert score_baseline("sgd", 1e6, config, [5]) == [(float("inf"), 1.0)]


@pytest.mark.parametrize("lr", [0, -1.0, float("nan"), float("inf"), True])
def test_score_baseline_rejects_bad_lr(tiny_config, lr):
    with pytest.raises(ValueError, match="lr must be"):
        score_baseline("sgd", lr, tiny_config(), [3])


@pytest.mark.parametrize("horizons", [[2.5, 5], ["3", "6"], [True, 5], [5, 3]])
def test_score_baseline_rejects_bad_horizons(tiny_config, horizons):
    with pytest.raises(ValueError, match="horizons must be"):
        score_baseline("sgd", 0.1, tiny_config(), horizons)


def test_score_baseline_restores_thread_count(tiny_config):
    torch.set_num_threads(1)
    score_baseline("sgd", 0.1, tiny_config(num_threads=2, validation_tasks=1), [2])
    assert torch.get_num_threads() == 1


def test_score_baseline_script(tmp_path, tiny_config):
    config_path = tmp_path / "config.json"
    config_path.write_text(tiny_config(validation_tasks=1).to_json())
    script = Path(__file__).resolve().parents[2] / "scripts" / "score_baseline.py"
    env = {**os.environ, "PYTHONPATH": SRC}

    def run(*options):
        command = [sys.executable, str(script), str(config_path), *options]
        return subprocess.run(command, capture_output=True, text=True, env=env)

    good = run("--optimizer", "adam", "--lr", "0.01", "--horizons", "3,6")
    assert good.returncode == 0, good.stderr
    assert "| 3 |" in good.stdout
    assert "| 6 |" in good.stdout
    for options, message in [
        (("--optimizer", "lstm", "--lr", "0.1"), "score_baseline takes one of"),
        (("--lr", "nan"), "lr must be a positive number"),
        (("--lr", "0.1", "--validation-tasks", "0"), "validation_tasks must be"),
        (("--lr", "0.1", "--threads", "-2"), "num_threads must be"),
    ]:
        bad = run(*options)
        assert bad.returncode == 2, options
        assert message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    config_path.unlink()
    missing = run("--lr", "0.1")
    assert missing.returncode == 2
    assert "is not a file" in missing.stderr


@pytest.mark.parametrize("name", ["slstm", "diagonal-newton", "lbfgs"])
def test_score_baseline_rejects_other_optimizers(tiny_config, name):
    with pytest.raises(ValueError, match="score_baseline takes one of"):
        score_baseline(name, 0.1, tiny_config(), [3])


def test_score_baseline_script_options(tmp_path, tiny_config):
    script = Path(__file__).resolve().parents[2] / "scripts" / "score_baseline.py"
    env = {**os.environ, "PYTHONPATH": SRC}

    def run(config, *options):
        config_path = tmp_path / "config.json"
        config_path.write_text(config.to_json())
        command = [sys.executable, str(script), str(config_path), *options]
        return subprocess.run(command, capture_output=True, text=True, env=env)

    # --device overrides a config that names a device this machine may lack.
    on_cpu = run(tiny_config(device="cuda"), "--lr", "0.01", "--horizons", "3",
                 "--device", "cpu")  # fmt: skip
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert "adam lr 0.01 on 1 network\n" in on_cpu.stdout
    assert "warning" not in on_cpu.stderr

    # --data-dir overrides the config's, so the error names the given folder.
    missing = tmp_path / "no-such-folder"
    mnist = tiny_config(data="mnist", validation=0.1)
    no_data = run(mnist, "--lr", "0.01", "--data-dir", str(missing))
    assert no_data.returncode == 2
    assert str(missing) in no_data.stderr, no_data.stderr

    diverged = run(tiny_config(), "--lr", "1e6", "--horizons", "3,6",
                   "--device", "cpu")  # fmt: skip
    assert diverged.returncode == 0, diverged.stderr
    assert "| 3 | inf |" in diverged.stdout
    assert "network diverged within 3 steps" in diverged.stderr
    assert "try a smaller --lr" in diverged.stderr

    usage = run(tiny_config(), "--help")
    assert usage.returncode == 0
    assert "(default: adam)" in usage.stdout


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_unwritable_out_is_rejected_before_loading(tmp_path):
    # /proc takes no new files, even for root, whom os.access lets write there.
    # The checkpoint is missing, so the --out error shows it is checked first.
    with pytest.raises(ValueError) as info:
        calibrate_output_scale(tmp_path / "absent.pt", [0.1], out="/proc/c.pt")
    assert "--out '/proc/c.pt' cannot be written" in str(info.value)
    assert "pass a path in a writable folder" in str(info.value)


def test_out_check_leaves_no_folders(tmp_path):
    from slstm.utils import check_output_path

    out = tmp_path / "new" / "deeper" / "c.pt"
    assert check_output_path(out) == out
    assert list(tmp_path.iterdir()) == []
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        check_output_path(blocked / "sub" / "c.pt")


def test_failed_write_prints_scores_first(trained, tmp_path, capsys, monkeypatch):
    import errno

    import slstm.optim

    _, out = trained
    temporary = str(tmp_path / "tmpabc123.tmp")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", temporary)

    monkeypatch.setattr(slstm.optim, "save_checkpoint", full_disk)
    target = tmp_path / "c.pt"
    code = main(["calibrate", str(out / "last.pt"), "--scales", "0.1",
                 "--validation-tasks", "1", "--out", str(target)])  # fmt: skip
    assert code == 2
    printed = capsys.readouterr()
    assert "| 0.1 (best) |" in printed.out
    assert f"writing --out {str(target)!r} failed" in printed.err
    assert "No space left on device" in printed.err
    assert "the best output scale was 0.1" in printed.err
    assert "tmpabc123" not in printed.err


@pytest.mark.parametrize("text", ["0.1,", "0.1,,0.2", ",0.1", "0.1, ,0.2"])
def test_cli_rejects_empty_scale_entries(text, capsys):
    with pytest.raises(SystemExit) as info:
        main(["calibrate", "any.pt", "--scales", text])
    assert info.value.code == 2
    assert f"separated by commas, such as 0.1,0.2,0.3, got {text!r}" in (
        capsys.readouterr().err
    )


def test_warns_when_config_scores_other_tasks(trained, caplog):
    config, out = trained
    other = config.replace(batch_size=16, net_sizes={"channels": 2, "hidden": 8})
    with caplog.at_level("WARNING", logger="slstm.meta"):
        calibrate_output_scale(out / "last.pt", [0.1], config=config, horizons=[2])
    assert "other tasks" not in caplog.text
    with caplog.at_level("WARNING", logger="slstm.meta"):
        calibrate_output_scale(out / "last.pt", [0.1], config=other, horizons=[2])
    assert "--config scores other tasks" in caplog.text
    assert "batch_size: checkpoint 32, --config 16" in caplog.text
    assert "net_sizes" in caplog.text


def test_warns_about_another_validation_seed(trained, caplog):
    _, out = trained
    with caplog.at_level("WARNING", logger="slstm.meta"):
        result = calibrate_output_scale(
            out / "last.pt", [0.1], validation_seed=5, horizons=[2]
        )
    assert "the validation seed 5 differs from the validation seed 0" in caplog.text
    assert result.config.validation_seed == 5
    assert result.config.seed == 0


def test_warns_when_config_holds_out_other_images(trained, caplog):
    config, out = trained
    with caplog.at_level("WARNING", logger="slstm.meta"):
        calibrate_output_scale(
            out / "last.pt", [0.1], config=config.replace(validation_seed=2),
            horizons=[2],
        )  # fmt: skip
    assert "the validation seed 2 differs from the validation seed 0" in caplog.text
    assert "pass --validation-seed 0" in caplog.text


def test_bad_validation_seed_is_rejected_first(trained, caplog):
    _, out = trained
    with caplog.at_level("WARNING", logger="slstm.meta"):
        with pytest.raises(ValueError, match="validation_seed must be an int in"):
            calibrate_output_scale(out / "last.pt", [0.1], validation_seed=-1)
    assert "differs" not in caplog.text


def test_cli_rejects_disagreeing_seed_options(trained, capsys):
    _, out = trained
    code = main(["calibrate", str(out / "last.pt"), "--scales", "0.1",
                 "--seed", "1", "--validation-seed", "2"])  # fmt: skip
    assert code == 2
    assert "--seed 1 and --validation-seed 2 disagree" in capsys.readouterr().err


def test_seed_keyword_is_a_deprecated_alias(trained):
    _, out = trained
    with pytest.warns(DeprecationWarning, match="pass validation_seed"):
        result = calibrate_output_scale(out / "last.pt", [0.1], seed=4, horizons=[2])
    assert result.config.validation_seed == 4
    with pytest.raises(ValueError, match="seed=1 and validation_seed=2 disagree"):
        calibrate_output_scale(out / "last.pt", [0.1], seed=1, validation_seed=2)
