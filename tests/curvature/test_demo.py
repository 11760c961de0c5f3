"""``slstm demo`` on real Fashion-MNIST batches, with narrow networks."""

import argparse
from pathlib import Path

import pytest

from slstm.curvature import demo

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DATA_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="needs the Debian package dataset-fashion-mnist",
)
def test_demo_runs_on_fashion_mnist(capsys):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(
        [
            "--batch-size",
            "16",
            "--channels",
            "4",
            "--hidden",
            "8",
            "--check-channels",
            "2",
            "--check-hidden",
            "4",
            "--check-batch-size",
            "8",
            "--samples",
            "10",
            "--device",
            "cpu",
        ]
    )

    assert demo.run(args) == 0

    output = capsys.readouterr().out
    assert "fashion-mnist: batch of 16 images (1, 28, 28)" in output
    assert "Part 2" in output
    # Under cross-entropy the last layer's Becker-LeCun diagonal is exact.
    part_2 = output[output.index("Part 2") :].splitlines()
    last_layer = next(line for line in part_2 if line.startswith("14.weight "))
    assert last_layer.split()[1:4] == ["0.00", "/", "1.00"]


def test_demo_user_error_prints_one_line(capsys):
    from slstm.cli import main

    status = main(["demo", "--data", "digits", "--batch-size", "0"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("slstm demo: ")
    assert "\n" not in err
    assert "batch_size" in err
