"""`slstm train`: plain training with a registered optimizer, and the joint mode."""

import json

import torch

from slstm.cli import main
from slstm.meta.metrics import read_metrics
from slstm.optim import load_checkpoint

TINY = ["--data", "digits", "--net", "small_cnn", "--net-sizes",
        "channels=4,hidden=8", "--batch-size", "32", "--device", "cpu"]  # fmt: skip


def test_joint_mode_meta_learns_along_one_run(tmp_path, capsys):
    out = tmp_path / "joint"
    code = main(["train", *TINY, "--optimizer", "slstm", "--joint", "--steps", "30",
                 "--unroll", "5", "--eval-every", "10", "--meta-lr", "0.01",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30]
    assert [int(r["meta_steps"]) for r in rows] == [0, 2, 4, 6]
    checkpoint = load_checkpoint(out / "optimizer.pt")
    assert checkpoint.provenance["created_by"] == "slstm train --joint"
    assert checkpoint.config.inputs == ("grad", "hessian")
    # The read-out starts at zero; six meta-updates must have moved it.
    for net in checkpoint.nets.values():
        assert net.readout.weight.abs().max() > 0
    assert "meta-steps 6" in capsys.readouterr().out


def test_joint_mode_continues_from_checkpoint(tmp_path):
    first = tmp_path / "first"
    main(["train", *TINY, "--optimizer", "lstm", "--joint", "--steps", "10",
          "--unroll", "5", "--out", str(first)])  # fmt: skip
    second = tmp_path / "second"
    code = main(["train", *TINY, "--optimizer", "lstm", "--joint", "--steps", "10",
                 "--unroll", "5", "--checkpoint", str(first / "optimizer.pt"),
                 "--out", str(second)])  # fmt: skip
    assert code == 0
    before = load_checkpoint(first / "optimizer.pt").nets.state_dict()
    after = load_checkpoint(second / "optimizer.pt").nets.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_plain_training_with_adam_lowers_loss(capsys):
    code = main(["train", *TINY, "--optimizer", "adam", "--lr", "0.01", "--steps",
                 "40", "--eval-every", "40"])  # fmt: skip
    assert code == 0
    lines = [
        line for line in capsys.readouterr().out.splitlines() if "test loss" in line
    ]
    first, last = (float(line.split("test loss")[1].split()[0]) for line in lines)
    assert last < first


def test_plain_training_with_learned_checkpoint(tmp_path, capsys):
    out = tmp_path / "joint"
    main(["train", *TINY, "--optimizer", "slstm", "--joint", "--steps", "5",
          "--unroll", "5", "--out", str(out)])  # fmt: skip
    code = main(["train", *TINY, "--optimizer", "slstm", "--checkpoint",
                 str(out / "optimizer.pt"), "--steps", "5"])  # fmt: skip
    assert code == 0
    assert "step      5" in capsys.readouterr().out


def test_joint_mode_keeps_the_checkpoint_curvature_method(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", *TINY, "--optimizer", "slstm", "--joint", "--steps", "5",
                 "--unroll", "5", "--curvature-method", "hutchinson",
                 "--out", str(first)]) == 0  # fmt: skip
    second = tmp_path / "second"
    assert main(["train", *TINY, "--optimizer", "slstm", "--joint", "--steps", "5",
                 "--unroll", "5", "--checkpoint", str(first / "optimizer.pt"),
                 "--out", str(second)]) == 0  # fmt: skip
    saved = load_checkpoint(second / "optimizer.pt")
    # The networks are labelled with the method they were trained on.
    assert saved.config.curvature_method == "hutchinson"
    assert saved.provenance["meta_train_config"]["curvature_method"] == "hutchinson"
    assert json.loads((second / "config.json").read_text())["curvature_method"] == (
        "hutchinson"
    )
    capsys.readouterr()
    rejected = tmp_path / "rejected"
    code = main(["train", *TINY, "--optimizer", "slstm", "--joint", "--steps", "5",
                 "--checkpoint", str(first / "optimizer.pt"), "--curvature-method",
                 "becker-lecun", "--out", str(rejected)])  # fmt: skip
    assert code == 2
    assert "differs from hutchinson" in capsys.readouterr().err
    assert not rejected.exists()
