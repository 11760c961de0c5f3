import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from slstm.data import FASHION_MNIST_DIR
from slstm.optim import (
    OPTIMIZERS,
    LearnedOptimizerConfig,
    create_update_nets,
    save_checkpoint,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_loop_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR).is_dir(),
    reason=f"Fashion-MNIST not in {FASHION_MNIST_DIR}",
)
def test_example_trains_with_every_optimizer(tmp_path, capsys):
    arguments = ["--steps", "3", "--batch-size", "16", "--eval-examples", "64",
                 "--channels", "4", "--threads", "1"]  # fmt: skip
    for name in ("lstm", "slstm", "slstm-hutchinson"):
        # Untrained networks with a small read-out: this checks the loop, not
        # how well an optimizer meta-trained on tiny CNNs trains this larger one.
        preset, _, method = name.partition("-")
        config = LearnedOptimizerConfig.preset(
            preset, curvature_method=method or "becker-lecun"
        )
        torch.manual_seed(0)
        nets = create_update_nets(config)
        for net in nets.values():
            nn.init.normal_(net.readout.weight, std=1e-3)
        path = save_checkpoint(tmp_path / f"{name}.pt", nets, config, {})
        arguments += ["--checkpoint", f"{name}={path}"]
    threads = torch.get_num_threads()
    try:
        assert load_example().main(arguments) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[0] for row in rows] == list(OPTIMIZERS)
    for row in rows:
        first_loss, last_loss = float(row[1]), float(row[2])
        assert 0 < first_loss < 10
        assert 0 < last_loss < 10


def test_example_reports_missing_checkpoint(tmp_path, capsys):
    arguments = ["--optimizers", "lstm", "--data", "digits", "--steps", "1"]
    arguments += ["--checkpoint", f"lstm={tmp_path / 'absent.pt'}"]
    assert load_example().main(arguments) == 1
    assert "not found" in capsys.readouterr().err


def test_example_rejects_unknown_optimizer(capsys):
    assert load_example().main(["--optimizers", "adagrad", "--data", "digits"]) == 2
    assert "unknown optimizers" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--threads", "0"), ("--channels", "-1")])
def test_example_rejects_bad_sizes(capsys, option, value):
    assert load_example().main([option, value, "--data", "digits"]) == 2
    assert f"{option} must be >= " in capsys.readouterr().err
