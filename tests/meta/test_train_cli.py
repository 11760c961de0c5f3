"""`slstm train`: user errors end in one line and exit status 2."""

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
