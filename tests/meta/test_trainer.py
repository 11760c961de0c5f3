"""Meta-training runs end to end: files, counters, resume, atomic checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slstm.cli import main
from slstm.meta import MetaTrainConfig, MetaTrainer, meta_train
from slstm.meta.io import atomic_torch_save
from slstm.meta.metrics import read_metrics
from slstm.meta.trainer import STATE_FILE
from slstm.models import build_model
from slstm.optim import CheckpointError, load, load_checkpoint

from .conftest import TINY_ARGS

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _weights(path):
    checkpoint = load_checkpoint(path)
    return {
        f"{kind}.{name}": value
        for kind, net in checkpoint.nets.items()
        for name, value in net.state_dict().items()
    }


def _assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_cli_runs_tiny_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "3", "--validate-every",
                 "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "state/latest.pt"):
        assert (out / name).is_file(), name
    config = MetaTrainConfig.load(out / "config.json")
    assert config.episodes == 3
    assert config.net_sizes == {"channels": 4, "hidden": 8}
    rows = read_metrics(out / "metrics.csv")
    assert [r["kind"] for r in rows].count("episode") == 3
    validations = [r for r in rows if r["kind"] == "validation"]
    assert [int(r["episode"]) for r in validations] == [2, 3]
    # The files are optimizer checkpoints that slstm.optim loads onto a network.
    model = build_model("small_cnn", (1, 8, 8), 10, channels=4, hidden=8)
    optimizer = load(out / "best.pt", model)
    assert load_checkpoint(out / "best.pt").provenance["meta_train_config"]["seed"] == 0
    assert optimizer.param_groups
    with pytest.raises(CheckpointError, match="is the resume state of a meta-training"):
        load_checkpoint(out / "state" / "latest.pt")
    assert "best checkpoint" in capsys.readouterr().out


def test_best_checkpoint_has_lowest_validation_loss(tiny_config):
    config = tiny_config(episodes=4, validate_every=1, meta_lr=0.01)
    result = meta_train(config, progress=False)
    rows = [
        r for r in read_metrics(result.out / "metrics.csv") if r["kind"] == "validation"
    ]
    losses = [float(r["validation_loss"]) for r in rows]
    best_episode = int(rows[losses.index(min(losses))]["episode"])
    provenance = load_checkpoint(result.best_checkpoint).provenance
    assert provenance["episodes"] == best_episode
    assert result.best_validation_loss == pytest.approx(min(losses))


def test_non_finite_meta_loss_is_skipped(tiny_config):
    trainer = MetaTrainer(tiny_config(episodes=1), progress=False)
    with torch.no_grad():
        for net in trainer.nets.values():
            net.readout.bias.fill_(3e38)  # the first step overflows the network
    before = {k: v.clone() for k, v in trainer.nets.state_dict().items()}
    summary = trainer.train_episode(0)
    assert trainer.counters.nonfinite == 1
    assert trainer.counters.meta_steps == 0
    assert trainer.counters.skipped == 1
    assert trainer.counters.diverged == 1
    assert summary.diverged == 1
    after = trainer.nets.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed by a skipped update"


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    episodes = "8"
    args = [*TINY_ARGS, "--episodes", episodes, "--validate-every", "3",
            "--checkpoint-every", "2", "--optimizer", "slstm"]  # fmt: skip
    command = [sys.executable, "-m", "slstm", "meta-train", *args]
    env = {**os.environ, "PYTHONPATH": SRC}

    reference = tmp_path / "reference"
    subprocess.run([*command, "--out", str(reference)], check=True, env=env)
    first = torch.load(reference / STATE_FILE, weights_only=True)

    # SIGKILL resumes from the last periodic checkpoint; SIGTERM first saves
    # the state after the last finished episode.
    for kill in (signal.SIGKILL, signal.SIGTERM):
        interrupted = tmp_path / kill.name
        process = subprocess.Popen([*command, "--out", str(interrupted)], env=env)
        metrics = interrupted / "metrics.csv"
        deadline = time.monotonic() + 120
        # Kill as soon as a few episodes are done, mid-run.
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.exists() and metrics.read_text().count("\nepisode,") >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(kill)
        code = process.wait()
        assert code == (-9 if kill == signal.SIGKILL else 130)
        saved = torch.load(interrupted / STATE_FILE, weights_only=True)
        assert 0 < saved["counters"]["episode"] < int(episodes)

        subprocess.run(
            [sys.executable, "-m", "slstm", "meta-train", "--out", str(interrupted),
             "--resume", "--no-progress"],
            check=True,
            env=env,
        )  # fmt: skip
        _assert_same_weights(
            _weights(reference / "last.pt"), _weights(interrupted / "last.pt")
        )
        _assert_same_weights(
            _weights(reference / "best.pt"), _weights(interrupted / "best.pt")
        )
        second = torch.load(interrupted / STATE_FILE, weights_only=True)
        for slot, values in first["meta_optimizer"]["state"].items():
            for key, value in values.items():
                assert torch.equal(value, second["meta_optimizer"]["state"][slot][key])
        assert first["counters"]["meta_steps"] == second["counters"]["meta_steps"]
        rows = read_metrics(interrupted / "metrics.csv")
        assert [int(r["episode"]) for r in rows if r["kind"] == "episode"] == list(
            range(1, int(episodes) + 1)
        )


def test_resume_in_process_continues_to_more_episodes(tiny_config):
    meta_train(tiny_config(episodes=2), progress=False)
    result = meta_train(tiny_config(episodes=4), resume=True, progress=False)
    assert result.episodes == 4
    reference = meta_train(tiny_config(episodes=4, out=str(result.out) + "-ref"),
                           progress=False)  # fmt: skip
    _assert_same_weights(
        _weights(result.last_checkpoint), _weights(reference.last_checkpoint)
    )


def test_resume_rejects_changed_options(tiny_config):
    meta_train(tiny_config(episodes=1), progress=False)
    with pytest.raises(ValueError, match="--horizon: saved 10, requested 20"):
        meta_train(tiny_config(episodes=2, horizon=20), resume=True, progress=False)


def test_new_run_refuses_existing_output(tiny_config):
    meta_train(tiny_config(episodes=1), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        meta_train(tiny_config(episodes=1), progress=False)


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "latest.pt"
    atomic_torch_save({"episode": torch.tensor(1)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    big = torch.zeros(1_000_000)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"weights": big, "broken": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["episode"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_sigkill_during_writes_never_truncates(tmp_path):
    path = tmp_path / "latest.pt"
    writer = (
        "import sys, torch\n"
        "from slstm.meta.io import atomic_torch_save\n"
        "payload = torch.arange(2_000_000, dtype=torch.float32)\n"
        "for i in range(10_000):\n"
        "    atomic_torch_save({'i': i, 'payload': payload}, sys.argv[1])\n"
        "    print(i, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    for delay in (0.02, 0.07, 0.15):
        process = subprocess.Popen(
            [sys.executable, "-c", writer, str(path)], env=env, stdout=subprocess.PIPE
        )
        process.stdout.readline()  # one complete file exists
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = torch.load(path, weights_only=True)
        assert state["payload"].shape == (2_000_000,)
        assert state["payload"][-1] == 1_999_999


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        MetaTrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="loss_weights lists 2 numbers"):
        MetaTrainConfig(unroll=3, loss_weights="1,2")
    with pytest.raises(ValueError, match="unroll must be a positive int"):
        MetaTrainConfig(unroll=0)
    with pytest.raises(ValueError, match="no effect on the lstm optimizer"):
        MetaTrainConfig(optimizer="lstm", curvature_method="hutchinson")


def test_cli_names_a_split_smaller_than_a_minibatch(tmp_path, capsys):
    args = [*TINY_ARGS, "--episodes", "1", "--validate-every", "1", "--out"]
    code = main(["meta-train", *args, str(tmp_path / "r"), "--validation", "10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the validation split has 10 examples, fewer than one minibatch" in err
    assert "pass a smaller --batch-size or a larger --validation" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threads", "0", "--threads must be a positive int, got 0"),
        ("--meta-lr", "-1", "--meta-lr must be a positive number"),
        ("--validate-every", "-1", "--validate-every must be an int >= 0"),
    ],
)
def test_cli_errors_name_the_option(tmp_path, capsys, option, value, message):
    argv = ["meta-train", *TINY_ARGS, f"{option}={value}", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_an_out_that_is_no_folder(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out, message in [
        (a_file, "is a file, not a folder"),
        (a_file / "sub", "is not a folder; pass a path in a writable folder"),
        ("", "--out is empty; pass a folder path"),
    ]:
        code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2
        assert message in err
        assert "Traceback" not in err


def test_config_json_round_trip():
    config = MetaTrainConfig(net_sizes={"channels": [8, 16]}, loss_weights="linear")
    assert MetaTrainConfig.from_json(config.to_json()) == config
    assert config.step_weights(4) == [0.25, 0.5, 0.75, 1.0]


def test_old_config_validation_seed_is_seed(tmp_path):
    # config.json files written before validation_seed carved with the seed.
    old = {k: v for k, v in MetaTrainConfig(seed=3).to_dict().items()
           if k != "validation_seed"}  # fmt: skip
    assert MetaTrainConfig.from_saved(old).validation_seed == 3
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    assert MetaTrainConfig.load(path).validation_seed == 3
    assert MetaTrainConfig.from_json(json.dumps(old)).validation_seed == 3
    # Options that are not a saved run's take the default.
    assert MetaTrainConfig.from_dict(old).validation_seed == 0
    assert MetaTrainConfig(seed=3).validation_seed == 0
    with pytest.raises(ValueError, match="validation_seed must be an int >= 0"):
        MetaTrainConfig(validation_seed=-1.5)


def test_seed_changes_training_tasks_not_validation(tiny_config):
    from slstm.meta.trainer import load_task_data

    first = MetaTrainer(tiny_config(seed=0), progress=False)
    other = MetaTrainer(tiny_config(seed=1, out=str(first.out) + "-1"), progress=False)
    assert first.sampler.sample(0) != other.sampler.sample(0)
    assert first.sampler.validation_task(0) == other.sampler.validation_task(0)
    held_out = first.data.splits.validation.inputs
    assert torch.equal(held_out, other.data.splits.validation.inputs)
    moved = load_task_data(tiny_config(validation_seed=1), torch.device("cpu"))
    assert not torch.equal(held_out, moved.splits.validation.inputs)


def test_resume_rejects_another_validation_seed(tiny_config):
    meta_train(tiny_config(episodes=1), progress=False)
    with pytest.raises(ValueError) as error:
        meta_train(
            tiny_config(episodes=2, validation_seed=2), resume=True, progress=False
        )
    assert "--validation-seed: saved 0, requested 2" in str(error.value)
    assert "without validation_seed" in str(error.value)


def test_resume_before_first_checkpoint_starts_over(tiny_config):
    config = tiny_config(episodes=2)
    Path(config.out).mkdir(parents=True)
    (Path(config.out) / "config.json").write_text(config.to_json())
    result = meta_train(config, resume=True, progress=False)
    assert result.episodes == 2


def test_resume_without_run_is_rejected(tiny_config):
    with pytest.raises(FileNotFoundError, match="--resume found no checkpoint"):
        meta_train(tiny_config(episodes=1), resume=True, progress=False)


def test_horizon_not_multiple_of_unroll(tiny_config):
    trainer = MetaTrainer(tiny_config(horizon=7, unroll=5, episodes=1), progress=False)
    summary = trainer.train_episode(0)
    assert summary.inner_steps == 7
    assert trainer.counters.meta_steps == 2


@pytest.mark.parametrize("contents", ["garbage", "shell call"])
def test_resume_rejects_unreadable_state(tiny_config, contents):
    result = meta_train(tiny_config(episodes=1), progress=False)
    state_path = result.out / "state" / "latest.pt"
    if contents == "garbage":
        state_path.write_bytes(b"hello world\n" * 100)
        expected = "is not a torch checkpoint: the file is neither"
    else:
        torch.save({"config": _CallsShellWhenUnpickled()}, state_path)
        expected = f"rejected .*latest.pt'?: it references {os.name}.system"
    with pytest.raises(ValueError, match=expected) as raised:
        meta_train(tiny_config(episodes=2), resume=True, progress=False)
    assert "drop" in str(raised.value)
    assert "will likely succeed" not in str(raised.value)


class _CallsShellWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("exit 3",))


def test_init_starts_from_checkpoint_weights(tmp_path, tiny_config):
    first = tiny_config(episodes=1, out=str(tmp_path / "first"), output_scale=0.2)
    meta_train(first, progress=False)
    saved = _weights(tmp_path / "first" / "last.pt")
    # A new run with --init (and another seed, so a fresh start would differ)
    # begins from those weights; only its output scale may change.
    config = tiny_config(
        out=str(tmp_path / "second"),
        init=str(tmp_path / "first" / "last.pt"),
        output_scale=0.3,
        seed=1,
    )
    trainer = MetaTrainer(config, progress=False)
    trainer.start_from_init()
    started = {
        f"{kind}.{name}": value
        for kind, net in trainer.nets.items()
        for name, value in net.state_dict().items()
    }
    _assert_same_weights(saved, started)
    assert trainer.nets["conv"].output_scale == 0.3


def test_init_rejects_other_architecture(tmp_path, tiny_config):
    meta_train(tiny_config(episodes=1, out=str(tmp_path / "first")), progress=False)
    config = tiny_config(
        out=str(tmp_path / "second"),
        init=str(tmp_path / "first" / "last.pt"),
        hidden_size=8,
    )
    with pytest.raises(ValueError, match="hidden_size is 20 but this run's is 8"):
        meta_train(config, progress=False)
    assert not (tmp_path / "second").exists()
    lstm = tiny_config(
        out=str(tmp_path / "third"),
        init=str(tmp_path / "first" / "last.pt"),
        optimizer="lstm",
    )
    with pytest.raises(ValueError, match="drop --optimizer"):
        meta_train(lstm, progress=False)


def test_init_rejects_non_finite_weights(tmp_path, tiny_config):
    meta_train(tiny_config(episodes=1, out=str(tmp_path / "first")), progress=False)
    checkpoint = load_checkpoint(tmp_path / "first" / "last.pt")
    with torch.no_grad():
        checkpoint.nets["fc"].lstm.weight_hh_l1[0, 0] = float("nan")
    from slstm.optim import save_checkpoint

    save_checkpoint(tmp_path / "nan.pt", checkpoint.nets, checkpoint.config, {})
    config = tiny_config(out=str(tmp_path / "second"), init=str(tmp_path / "nan.pt"))
    with pytest.raises(ValueError, match="fc network.s lstm.weight_hh_l1 contains NaN"):
        meta_train(config, progress=False)


def test_resume_does_not_read_init_again(tmp_path, tiny_config):
    meta_train(tiny_config(episodes=1, out=str(tmp_path / "first")), progress=False)
    start = tmp_path / "start.pt"
    start.write_bytes((tmp_path / "first" / "last.pt").read_bytes())
    out = tmp_path / "second"
    meta_train(tiny_config(episodes=1, out=str(out), init=str(start)), progress=False)
    recorded = load_checkpoint(out / "last.pt").provenance["init"]
    # The starting file may be gone by the time the run is resumed.
    start.unlink()
    config = tiny_config(episodes=2, out=str(out), init=str(start))
    meta_train(config, resume=True, progress=False)
    assert load_checkpoint(out / "last.pt").provenance["init"] == recorded
    assert recorded["path"] == str(start.resolve())


def test_config_rejects_empty_init(tiny_config):
    with pytest.raises(ValueError, match="init must be the path"):
        tiny_config(init="")


def test_cli_init_takes_unset_options_from_checkpoint(tmp_path):
    first = tmp_path / "first"
    code = main(["meta-train", *TINY_ARGS, "--optimizer", "lstm", "--episodes",
                 "1", "--output-scale", "0.05", "--validate-every", "0",
                 "--out", str(first)])  # fmt: skip
    assert code == 0
    second = tmp_path / "second"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--validate-every",
                 "0", "--init", str(first / "last.pt"),
                 "--out", str(second)])  # fmt: skip
    assert code == 0
    config = MetaTrainConfig.load(second / "config.json")
    assert config.optimizer == "lstm"
    assert config.output_scale == 0.05
    assert config.init == str(first / "last.pt")
    provenance = load_checkpoint(second / "last.pt").provenance
    assert provenance["meta_train_config"]["init"] == str(first / "last.pt")
    # The lineage: the starting checkpoint's own provenance travels along.
    first_provenance = load_checkpoint(first / "last.pt").provenance
    assert provenance["init"]["path"] == str(first / "last.pt")
    assert provenance["init"]["config"]["output_scale"] == 0.05
    assert provenance["init"]["provenance"] == first_provenance
    assert first_provenance["init"] is None


def test_cli_seed_leaves_validation_seed(tmp_path):
    out = tmp_path / "run"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--validate-every",
                 "0", "--seed", "3", "--out", str(out)])  # fmt: skip
    assert code == 0
    config = MetaTrainConfig.load(out / "config.json")
    assert config.seed == 3
    assert config.validation_seed == 0


def test_init_inherits_validation_seed(tmp_path, caplog):
    first = tmp_path / "first"
    code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--validate-every",
                 "0", "--validation-seed", "4", "--out", str(first)])  # fmt: skip
    assert code == 0
    for extra, expected in (([], 4), (["--validation-seed", "5"], 5)):
        out = tmp_path / f"continued-{expected}"
        caplog.clear()
        with caplog.at_level("WARNING", logger="slstm.meta"):
            code = main(["meta-train", *TINY_ARGS, "--episodes", "1", "--seed",
                         "9", "--validate-every", "0", "--init",
                         str(first / "last.pt"), *extra,
                         "--out", str(out)])  # fmt: skip
        assert code == 0
        config = MetaTrainConfig.load(out / "config.json")
        assert (config.seed, config.validation_seed) == (9, expected)
        warned = "--validation-seed 5 differs from the validation seed 4" in (
            caplog.text
        )
        assert warned == (expected == 5)


def test_init_validates_starting_weights(tmp_path, tiny_config):
    meta_train(tiny_config(episodes=1, out=str(tmp_path / "first")), progress=False)
    config = tiny_config(
        episodes=2,
        validate_every=1,
        out=str(tmp_path / "second"),
        init=str(tmp_path / "first" / "last.pt"),
    )
    meta_train(config, progress=False)
    rows = read_metrics(tmp_path / "second" / "metrics.csv")
    validated = [int(r["episode"]) for r in rows if r["kind"] == "validation"]
    assert validated == [0, 1, 2]
    best = min(
        (float(r["validation_loss"]), int(r["episode"]))
        for r in rows
        if r["kind"] == "validation"
    )
    provenance = load_checkpoint(tmp_path / "second" / "best.pt").provenance
    assert provenance["best_episode"] == best[1]


def test_stop_during_validation_abandons_it(tiny_config, caplog):
    config = tiny_config(episodes=2, validate_every=2)
    meta_train(config, progress=False)
    trainer = MetaTrainer(config, progress=False)
    trainer._resume()
    before = (trainer.best_validation_loss, trainer.last_validation)
    rows = len(read_metrics(trainer.out / "metrics.csv"))
    trainer._stop_requested = True  # as a distributed run's signal handler does
    with caplog.at_level("WARNING", logger="slstm.meta"):
        trainer._run_validation(None)
    assert "validation after episode 2 abandoned" in caplog.text
    assert (trainer.best_validation_loss, trainer.last_validation) == before
    assert len(read_metrics(trainer.out / "metrics.csv")) == rows


def test_resume_runs_a_validation_a_stop_abandoned(tiny_config):
    config = tiny_config(episodes=2, validate_every=2)
    result = meta_train(config, progress=False)
    state_path = result.out / STATE_FILE
    state = torch.load(state_path, weights_only=True)
    assert state["validated_episode"] == 2
    state["validated_episode"] = 0  # as if episode 2's validation was abandoned
    atomic_torch_save(state, state_path)
    meta_train(config.replace(episodes=3), resume=True, progress=False)
    rows = read_metrics(result.out / "metrics.csv")
    validated = [int(r["episode"]) for r in rows if r["kind"] == "validation"]
    # Episode 2's row from the first run, its redone validation, the final one.
    assert validated == [2, 2, 3]


def test_no_progress_bar_without_terminal(tiny_config, capsys, caplog):
    # Under pytest stderr is captured, not a terminal.
    with caplog.at_level("INFO", logger="slstm.meta"):
        meta_train(tiny_config(episodes=2, validate_every=2), progress=True)
    assert "meta-train slstm" not in capsys.readouterr().err
    assert "validation after episode 2" in caplog.text


def test_keep_validated_saves_each_validation(tiny_config):
    result = meta_train(
        tiny_config(episodes=3, validate_every=1, keep_validated=True), progress=False
    )
    validated_files = sorted((result.out / "validated").glob("*.pt"))
    assert [path.name for path in validated_files] == [
        "episode-000001.pt", "episode-000002.pt", "episode-000003.pt"
    ]  # fmt: skip
    rows = read_metrics(result.out / "metrics.csv")
    losses = {
        int(r["episode"]): float(r["validation_loss"])
        for r in rows
        if r["kind"] == "validation"
    }
    for path in validated_files:
        provenance = load_checkpoint(path).provenance
        assert provenance["validation_loss"] == losses[provenance["episodes"]]
    best = load_checkpoint(result.best_checkpoint).provenance["best_episode"]
    _assert_same_weights(
        _weights(result.best_checkpoint),
        _weights(result.out / "validated" / f"episode-{best:06d}.pt"),
    )


def test_snapshot_every_keeps_networks_without_validating(tiny_config):
    result = meta_train(
        tiny_config(episodes=4, validate_every=4, snapshot_every=2), progress=False
    )
    snapshots = sorted((result.out / "snapshots").glob("*.pt"))
    assert [path.name for path in snapshots] == [
        "episode-000002.pt", "episode-000004.pt"
    ]  # fmt: skip
    rows = read_metrics(result.out / "metrics.csv")
    assert [int(r["episode"]) for r in rows if r["kind"] == "validation"] == [4]
    second, fourth = (load_checkpoint(path).provenance for path in snapshots)
    assert second["episodes"] == 2
    # Episode 2 was never scored, so its file carries no validation score.
    assert second["validation_loss"] is None
    assert second["validation_by_horizon"] == {}
    assert fourth["validation_loss"] == result.final_validation_loss
    # The last snapshot contains the run's final networks.
    _assert_same_weights(_weights(result.out / "last.pt"), _weights(snapshots[-1]))
    with pytest.raises(ValueError, match="snapshot_every must be an int >= 0"):
        tiny_config(snapshot_every=-1)


def test_keep_validated_is_off_by_default(tiny_config):
    result = meta_train(tiny_config(episodes=2, validate_every=1), progress=False)
    assert not (result.out / "validated").exists()


def test_cli_takes_keep_validated(tmp_path):
    out = tmp_path / "run"
    args = [*TINY_ARGS, "--episodes", "2", "--validate-every", "2"]
    assert main(["meta-train", *args, "--keep-validated", "--out", str(out)]) == 0
    assert MetaTrainConfig.load(out / "config.json").keep_validated
    assert (out / "validated" / "episode-000002.pt").exists()
    # A resumed run keeps saving them, and validates its new last episode.
    resume = ["meta-train", "--out", str(out), "--resume", "--episodes", "3"]
    assert main(resume) == 0
    assert (out / "validated" / "episode-000003.pt").exists()


def test_resume_says_when_no_episode_is_left(tmp_path, caplog):
    out = tmp_path / "run"
    args = [*TINY_ARGS, "--episodes", "2", "--validate-every", "0"]
    assert main(["meta-train", *args, "--out", str(out)]) == 0
    caplog.clear()
    assert main(["meta-train", "--out", str(out), "--resume", "--episodes", "1"]) == 0
    assert "has done 2 episodes, already at least --episodes 1" in caplog.text


def test_cli_takes_snapshot_every(tmp_path):
    out = tmp_path / "run"
    args = [*TINY_ARGS, "--episodes", "2", "--validate-every", "0"]
    assert main(["meta-train", *args, "--snapshot-every", "1", "--out", str(out)]) == 0
    assert MetaTrainConfig.load(out / "config.json").snapshot_every == 1
    assert sorted(path.name for path in (out / "snapshots").glob("*.pt")) == [
        "episode-000001.pt", "episode-000002.pt"
    ]  # fmt: skip


def test_resume_may_turn_on_keep_validated(tmp_path):
    out = tmp_path / "run"
    args = [*TINY_ARGS, "--episodes", "2", "--validate-every", "2"]
    assert main(["meta-train", *args, "--out", str(out)]) == 0
    resume = ["meta-train", "--out", str(out), "--resume", "--episodes", "4"]
    assert main([*resume, "--keep-validated"]) == 0
    assert [path.name for path in (out / "validated").glob("*.pt")] == [
        "episode-000004.pt"
    ]
