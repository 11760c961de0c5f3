"""`slstm train`: user errors end in one line and exit status 2."""

import json

import pytest
import torch

from slstm.cli import main


def _one_line_error(capsys, argv, command="train"):
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"slstm {command}: ")
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--classes", "12"], "classes"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--net", "foo"], "foo"),
        (["--optimizer", "sgd", "--lr", "-1"], "--lr must be a positive number"),
        (["--optimizer", "adam", "--checkpoint", "x.pt"], "learned optimizers"),
        (["--optimizer", "adam", "--joint"], "--optimizer lstm or slstm"),
        (["--steps", "0"], "--steps must be positive"),
        (
            ["--curvature-method", "nosuch"],
            "--curvature-method 'nosuch' is invalid; use one of",
        ),
        (
            ["--optimizer", "adam", "--curvature-method", "hutchinson"],
            "--optimizer adam reads no diagonal Hessian",
        ),
        (
            ["--optimizer", "lstm", "--joint", "--curvature-method", "hutchinson"],
            "--optimizer lstm reads no diagonal Hessian",
        ),
        (
            ["--optimizer", "slstm-hutchinson", "--joint"],
            "pass --optimizer slstm --checkpoint slstm-hutchinson-fashion-mnist",
        ),
        (["--out", ""], "--out is empty; pass a folder path"),
    ],
)
def test_user_errors_print_one_line(capsys, options, message):
    line = _one_line_error(
        capsys, ["train", "--data", "digits", "--steps", "1", *options]
    )
    assert message in line


def test_missing_data_dir_prints_one_line(capsys, tmp_path):
    line = _one_line_error(
        capsys, ["train", "--data", "mnist", "--data-dir", str(tmp_path / "none")]
    )
    assert str(tmp_path / "none") in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_prints_one_line(capsys):
    line = _one_line_error(capsys, ["train", "--data", "digits", "--device", "cuda"])
    assert "CUDA" in line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An SLSTM checkpoint whose provenance names mnist_cnn with channels=4."""
    from slstm.optim import LearnedOptimizerConfig, create_update_nets, save_checkpoint

    config = LearnedOptimizerConfig.preset("slstm", hidden_size=4)
    provenance = {
        "meta_train_config": {
            "net": "mnist_cnn",
            "net_sizes": {"channels": 4, "hidden": 8},
            "batch_size": 16,
        }
    }
    path = tmp_path_factory.mktemp("ckpt") / "slstm.pt"
    return save_checkpoint(path, create_update_nets(config), config, provenance)


def _train(checkpoint, *options):
    return main(
        ["train", "--data", "digits", "--optimizer", "slstm", "--checkpoint",
         str(checkpoint), "--steps", "1", "--eval-every", "0", *options]
    )  # fmt: skip


def test_warns_on_other_sizes(capsys, checkpoint):
    assert _train(checkpoint, "--net-sizes", "channels=6,hidden=8") == 0
    err = capsys.readouterr().err
    assert "warning" in err
    assert "sizes channels=4 (here channels=6)" in err
    assert "minibatch 16 (here 128)" in err


def test_no_warning_when_setting_matches(capsys, checkpoint):
    options = ("--net-sizes", "channels=4,hidden=8", "--batch-size", "16")
    assert _train(checkpoint, *options) == 0
    assert "warning" not in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "optimizee steps between meta-updates" in text
    assert "logarithms" in text
    for default in ("(default: 1000)", "(default: 128)", "(default: 0)"):
        assert default in text


def test_hutchinson_train_repeats_exactly(capsys, tmp_path):
    from slstm.optim import LearnedOptimizerConfig, create_update_nets, save_checkpoint

    config = LearnedOptimizerConfig.preset(
        "slstm", hidden_size=4, curvature_method="hutchinson"
    )
    torch.manual_seed(0)
    nets = create_update_nets(config)
    with torch.no_grad():
        for parameter in nets.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    path = save_checkpoint(tmp_path / "hutchinson.pt", nets, config, {})
    argv = ["train", "--data", "digits", "--optimizer", "slstm-hutchinson",
            "--checkpoint", str(path), "--steps", "3", "--eval-every", "1",
            "--net-sizes", "channels=4,hidden=8", "--batch-size", "16"]  # fmt: skip
    outputs = []
    for _ in range(2):
        torch.manual_seed(len(outputs))  # the global generator must not matter
        assert main(argv) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "step      3  train loss" in outputs[0]


def test_train_rejects_other_curvature_method(capsys, checkpoint):
    code = _train(checkpoint, "--curvature-method", "hutchinson")
    assert code == 2
    err = capsys.readouterr().err
    assert "--curvature-method hutchinson differs from becker-lecun" in err
    assert "drop --curvature-method" in err


def test_train_records_the_method_that_ran(checkpoint, tmp_path):
    out = tmp_path / "run"
    assert _train(checkpoint, "--out", str(out)) == 0
    settings = json.loads((out / "config.json").read_text())
    assert settings["curvature_method"] == "becker-lecun"


def test_out_must_be_a_folder(capsys, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    base = ["train", "--data", "digits", "--steps", "1"]
    line = _one_line_error(capsys, [*base, "--out", str(a_file)])
    assert "is a file, not a folder" in line
    line = _one_line_error(capsys, [*base, "--out", str(a_file / "sub")])
    assert "is not a folder; pass a path in a writable folder" in line


def test_refused_run_writes_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    _one_line_error(
        capsys, ["train", "--data", "digits", "--optimizer", "adam", "--joint",
                 "--out", str(out)]
    )  # fmt: skip
    assert not out.exists()
