import os
import pickle

import pytest
import torch
from torch import nn

import slstm
from slstm.optim import (
    CheckpointError,
    LearnedOptimizer,
    LearnedOptimizerConfig,
    create_update_nets,
    load,
    load_checkpoint,
    save_checkpoint,
    shipped_checkpoints,
)
from slstm.optim import checkpoints as checkpoints_module


def trained_looking_nets(config, seed=0):
    torch.manual_seed(seed)
    nets = create_update_nets(config)
    for net in nets.values():
        nn.init.normal_(net.readout.weight, std=0.1)
    return nets


def test_round_trip(tmp_path):
    config = LearnedOptimizerConfig.preset("slstm", output_scale=0.05)
    nets = trained_looking_nets(config)
    path = save_checkpoint(
        tmp_path / "sub" / "opt.pt",
        nets,
        config,
        {
            "command": "slstm meta-train",
            "dataset": "fashion-mnist",
            "configuration": {},
        },
    )
    checkpoint = load_checkpoint(path)
    assert checkpoint.config == config
    for kind in config.kinds:
        saved = nets[kind].state_dict()
        loaded = checkpoint.nets[kind].state_dict()
        assert saved.keys() == loaded.keys()
        for name in saved:
            assert torch.equal(saved[name], loaded[name]), name
    provenance = checkpoint.provenance
    assert provenance["command"] == "slstm meta-train"
    assert provenance["dataset"] == "fashion-mnist"
    assert provenance["code_version"] == slstm.__version__
    assert "git_commit" in provenance
    assert "saved_at" in provenance


def test_provenance_must_be_json(tmp_path):
    config = LearnedOptimizerConfig()
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(
            tmp_path / "a.pt", create_update_nets(config), config, {"x": {1, 2}}
        )


class CallsPrintWhenUnpickled:
    def __reduce__(self):
        return (print, ("code from the checkpoint ran",))


def test_rejects_pickled_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": "slstm-learned-optimizer", "x": CallsPrintWhenUnpickled()}, path
    )
    with pytest.raises(CheckpointError, match="rejected .*print"):
        load_checkpoint(path)
    assert "code from the checkpoint ran" not in capsys.readouterr().out


def test_rejects_other_format(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a learned-optimizer checkpoint"):
        load_checkpoint(path)


def test_rejects_newer_version(tmp_path):
    config = LearnedOptimizerConfig()
    path = save_checkpoint(tmp_path / "a.pt", create_update_nets(config), config, {})
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


@pytest.mark.parametrize("provenance", [7, None, ["a", "b"]])
def test_rejects_provenance_of_other_type(tmp_path, provenance):
    config = LearnedOptimizerConfig()
    path = save_checkpoint(tmp_path / "a.pt", create_update_nets(config), config, {})
    payload = torch.load(path, weights_only=True)
    payload["provenance"] = provenance
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="its provenance is a"):
        load_checkpoint(path)


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_rejects_weights_of_other_shape(tmp_path):
    config = LearnedOptimizerConfig()
    path = save_checkpoint(tmp_path / "a.pt", create_update_nets(config), config, {})
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden_size"] = 8
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="damaged or inconsistent"):
        load_checkpoint(path)


GARBAGE_FILES = {
    # Random bytes: torch 2.13 raises IndexError or UnpicklingError on these.
    "random": bytes(
        torch.randint(
            0,
            256,
            (5000,),
            generator=torch.Generator().manual_seed(0),
            dtype=torch.uint8,
        ).tolist()
    ).lstrip(b"\x80"),
    # Text: torch 2.13 raises KeyError: 101 (the byte "e").
    "text": b"hello world\n",
    "short": b"not a zip file at all",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE_FILES))
def test_rejects_garbage_file(tmp_path, kind):
    path = tmp_path / "junk.pt"
    path.write_bytes(GARBAGE_FILES[kind])
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert str(path) in message
    assert "neither a zip archive nor a pickle" in message
    assert "best.pt or last.pt written by `slstm meta-train`" in message
    assert raised.value.__cause__ is not None


def test_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty. Pass a best.pt"):
        load_checkpoint(path)


def test_rejects_truncated_checkpoint(tmp_path):
    config = LearnedOptimizerConfig()
    path = save_checkpoint(tmp_path / "a.pt", create_update_nets(config), config, {})
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="is not a torch checkpoint: the file"):
        load_checkpoint(path)


class CallsShellWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("exit 3",))


@pytest.mark.parametrize("writer", ["torch.save", "legacy torch.save", "pickle"])
def test_rejects_pickled_shell_call(tmp_path, writer):
    path = tmp_path / "evil.pt"
    payload = {"x": CallsShellWhenUnpickled()}
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "legacy torch.save":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert f"rejected {str(path)!r}: it references {os.name}.system" in message
    # torch's own message advises re-running with weights_only=False.
    assert "will likely succeed" not in message
    assert "Re-running" not in message


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_missing_shipped_name_lists_shipped():
    with pytest.raises(CheckpointError, match="shipped checkpoints: ") as info:
        load_checkpoint("no-such-optimizer")
    for name in shipped_checkpoints():
        assert name in str(info.value)


def test_shipped_name_loads(tmp_path, monkeypatch):
    config = LearnedOptimizerConfig.preset("lstm")
    nets = trained_looking_nets(config)
    monkeypatch.setattr(checkpoints_module, "PRETRAINED_DIR", tmp_path)
    save_checkpoint(tmp_path / "lstm-test-data.pt", nets, config, {})
    assert shipped_checkpoints() == ["lstm-test-data"]
    checkpoint = load_checkpoint("lstm-test-data")
    assert checkpoint.config == config


def test_shipped_name_wins_over_local_path(tmp_path, monkeypatch):
    shipped_dir = tmp_path / "pretrained"
    shipped_dir.mkdir()
    monkeypatch.setattr(checkpoints_module, "PRETRAINED_DIR", shipped_dir)
    lstm = LearnedOptimizerConfig.preset("lstm")
    save_checkpoint(shipped_dir / "opt.pt", trained_looking_nets(lstm), lstm, {})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # A meta-training --out folder of the same name must not hide it.
    (work / "opt").mkdir()
    assert load_checkpoint("opt").config == lstm
    # Nor may a local file of that name, which "./opt" still reaches.
    (work / "opt").rmdir()
    slstm_config = LearnedOptimizerConfig.preset("slstm")
    nets = trained_looking_nets(slstm_config)
    save_checkpoint(work / "opt", nets, slstm_config, {})
    assert load_checkpoint("opt").config == lstm
    assert load_checkpoint("./opt").config == slstm_config
    assert load_checkpoint(work / "opt").config == slstm_config


@pytest.mark.parametrize("name", ["lstm-fashion-mnist", "slstm-fashion-mnist"])
def test_shipped_checkpoints_load(name):
    if name not in shipped_checkpoints():
        with pytest.raises(CheckpointError, match="no shipped checkpoint"):
            load_checkpoint(name)
        return
    checkpoint = load_checkpoint(name)
    assert checkpoint.config.needs_curvature == name.startswith("slstm")
    assert checkpoint.provenance["dataset"]


def test_load_builds_optimizer(tmp_path):
    config = LearnedOptimizerConfig.preset("lstm")
    nets = trained_looking_nets(config)
    path = save_checkpoint(tmp_path / "a.pt", nets, config, {})
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    optimizer = load(path, model)
    assert isinstance(optimizer, LearnedOptimizer)
    assert [group["kind"] for group in optimizer.param_groups] == ["conv", "fc"]
    model(torch.randn(3, 1, 4, 4)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    changed = [
        not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)
    ]
    assert all(changed)


def test_load_accepts_named_parameters(tmp_path):
    config = LearnedOptimizerConfig.preset("lstm")
    path = save_checkpoint(tmp_path / "a.pt", trained_looking_nets(config), config, {})
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    optimizer = load(path, model.named_parameters())
    names = [group["param_names"] for group in optimizer.param_groups]
    assert names == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    model(torch.randn(3, 1, 4, 4)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    for b, p in zip(before, model.parameters(), strict=True):
        assert not torch.equal(b, p)


def _saved_run(tmp_path, config, seeds):
    """Save one checkpoint per seed as meta-training's validated/ files would."""
    paths = []
    for episode, seed in enumerate(seeds, start=1):
        provenance = {
            "command": "slstm meta-train --out run",
            "dataset": "fashion-mnist",
            "meta_train_config": {"net": "mnist_cnn"},
            "episodes": 10 * episode,
            "validation_loss": 0.5 + episode,
        }
        nets = trained_looking_nets(config, seed=seed)
        paths.append(
            save_checkpoint(
                tmp_path / f"episode-{episode}.pt", nets, config, provenance
            )
        )
    return paths


def test_average_is_weight_mean(tmp_path):
    config = LearnedOptimizerConfig.preset("slstm", hidden_size=4)
    paths = _saved_run(tmp_path, config, seeds=(0, 1, 2))
    average = slstm.optim.average_checkpoints(paths)
    loaded = [load_checkpoint(path) for path in paths]
    for kind in config.kinds:
        for name, value in average.nets[kind].state_dict().items():
            expected = sum(c.nets[kind].state_dict()[name] for c in loaded) / 3
            torch.testing.assert_close(value, expected)
    assert average.config == config
    record = average.provenance["weight_average"]
    assert [source["episode"] for source in record["sources"]] == [10, 20, 30]
    assert record["source_command"] == "slstm meta-train --out run"
    assert average.provenance["meta_train_config"] == {"net": "mnist_cnn"}
    # One source's scores would misdescribe the average.
    assert "validation_loss" not in average.provenance
    assert "episodes" not in average.provenance


def test_average_rejects_other_configurations(tmp_path):
    first = _saved_run(tmp_path / "a", LearnedOptimizerConfig.preset("slstm"), (0,))
    other = LearnedOptimizerConfig.preset("slstm", curvature_method="hutchinson")
    second = _saved_run(tmp_path / "b", other, (1,))
    with pytest.raises(CheckpointError) as error:
        slstm.optim.average_checkpoints([*first, *second])
    assert "curvature_method: 'hutchinson' vs 'becker-lecun'" in str(error.value)
    assert "average only checkpoints of one" in str(error.value)
    with pytest.raises(CheckpointError, match="at least two checkpoints, got 1"):
        slstm.optim.average_checkpoints(first)
    with pytest.raises(CheckpointError, match="given more than once"):
        slstm.optim.average_checkpoints([first[0], first[0]])


def test_average_rejects_checkpoints_of_other_runs(tmp_path):
    config = LearnedOptimizerConfig.preset("lstm", hidden_size=4)
    first = _saved_run(tmp_path / "a", config, (0,))
    nets = trained_looking_nets(config, seed=1)
    provenance = {"meta_train_config": {"net": "small_cnn"}}
    other = save_checkpoint(tmp_path / "other.pt", nets, config, provenance)
    with pytest.raises(CheckpointError, match="meta-training net: 'small_cnn' vs"):
        slstm.optim.average_checkpoints([*first, other])


def test_average_rejects_runs_of_another_seed_and_averages(tmp_path):
    config = LearnedOptimizerConfig.preset("lstm", hidden_size=4)
    first = _saved_run(tmp_path / "a", config, (0, 1))
    nets = trained_looking_nets(config, seed=2)
    run = {"net": "mnist_cnn", "seed": 1, "episodes": 99, "out": "elsewhere"}
    other = save_checkpoint(tmp_path / "seed1.pt", nets, config,
                            {"meta_train_config": run})  # fmt: skip
    reseeded = {"net": "mnist_cnn", "seed": 0, "episodes": 99, "out": "elsewhere"}
    resumed = save_checkpoint(tmp_path / "resumed.pt", nets, config,
                              {"meta_train_config": reseeded})  # fmt: skip
    # The first files record no seed, so only files that both record it compare.
    slstm.optim.average_checkpoints([resumed, *first])
    with pytest.raises(CheckpointError, match="meta-training seed: 1 vs 0"):
        slstm.optim.average_checkpoints([resumed, other])
    average = slstm.optim.average_checkpoints(first)
    mean = save_checkpoint(tmp_path / "mean.pt", average.nets, average.config,
                           average.provenance)  # fmt: skip
    with pytest.raises(CheckpointError, match="is itself an average"):
        slstm.optim.average_checkpoints([*first, mean])
    with pytest.raises(CheckpointError, match="takes a list of checkpoints"):
        slstm.optim.average_checkpoints(str(first[0]))


def test_average_command_writes_file(tmp_path, capsys, monkeypatch):
    from slstm.cli import main

    config = LearnedOptimizerConfig.preset("lstm", hidden_size=4)
    paths = _saved_run(tmp_path, config, seeds=(0, 1))
    out = tmp_path / "mean.pt"
    argv = ["average", *map(str, paths), "--out", str(out)]
    # The recorded command is read from sys.argv, as for the console script.
    monkeypatch.setattr("sys.argv", ["slstm", *argv])
    assert main(argv) == 0
    loaded = load_checkpoint(out)
    assert loaded.provenance["command"].startswith("slstm average")
    assert loaded.provenance["created_by"] == "slstm average"
    assert len(loaded.provenance["weight_average"]["sources"]) == 2
    assert main(["average", str(paths[0]), "--out", str(out)]) == 2
    assert "at least two checkpoints" in capsys.readouterr().err
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert main(["average", *map(str, paths), "--out", str(blocked / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder; pass a path in a writable folder" in err


def test_average_command_keeps_its_sources(tmp_path, capsys, monkeypatch):
    from slstm.cli import main

    config = LearnedOptimizerConfig.preset("lstm", hidden_size=4)
    paths = _saved_run(tmp_path, config, seeds=(0, 1))
    before = paths[1].read_bytes()
    monkeypatch.chdir(tmp_path)
    # The same file under another spelling of its path.
    assert main(["average", *map(str, paths), "--out", paths[1].name]) == 2
    err = capsys.readouterr().err
    assert f"--out '{paths[1].name}' is one of the checkpoints being averaged" in err
    assert paths[1].read_bytes() == before
