"""`slstm info` and the command-line options for data and networks."""

import argparse
import os
import re

import pytest

from slstm.cli import main
from slstm.data import add_data_arguments, load_dataset_from_args, parse_classes
from slstm.models import add_model_arguments, model_from_args, parse_size


def test_info_lists_datasets_and_networks(capsys):
    assert main(["info", "--data", "digits"]) == 0
    out = capsys.readouterr().out
    for name in ("fashion-mnist", "mnist", "cifar10", "imagefolder", "digits"):
        assert f" {name} " in out
    assert "* digits" in out
    assert "bundled with scikit-learn" in out
    assert "Networks for digits: input 1x8x8, 10 classes" in out
    # Three conv layers of 64 maps on 8x8 digits pool down to 64x1x1.
    expected = (1 * 64 * 25 + 64) + 2 * (64 * 64 * 25 + 64) + (64 * 32 + 32)
    expected += 32 * 32 + 32 + 32 * 10 + 10
    assert re.search(rf"mnist_cnn +{expected:,} parameters", out)
    assert "imagenet_cnn  not built: imagenet_cnn: input 1x8x8 is too small" in out
    assert "Layers of mnist_cnn" in out
    assert "Conv2d 1->64 5x5 pad 2" in out


def test_info_sizes_and_class_subset(capsys):
    args = ["info", "--data", "cifar10", "--net", "small_cnn", "--classes", "5"]
    assert main([*args, "--net-size", "channels=8", "--net-size", "hidden=0"]) == 0
    out = capsys.readouterr().out
    assert "input 3x32x32, 5 classes, sizes channels=8, hidden=0" in out
    expected = (3 * 8 * 25 + 8) + (8 * 16 * 16 * 5 + 5)
    assert re.search(rf"small_cnn +{expected:,} parameters", out)
    assert "Linear 2048->5" in out


def test_info_loads_dataset(capsys, idx_dir):
    assert main(["info", "--data", "mnist", "--data-dir", str(idx_dir), "--load"]) == 0
    out = capsys.readouterr().out
    assert f"{idx_dir} (folder found; --load checks its files)" in out
    assert "Loaded DataSplits('mnist', train=40, test=20, input 1x6x5" in out
    assert "per-channel mean (" in out


def test_info_reports_data_error(capsys, tmp_path):
    status = main(["info", "--data", "mnist", "--data-dir", str(tmp_path), "--load"])
    assert status == 1
    err = capsys.readouterr().err
    assert "missing file train-images-idx3-ubyte.gz" in err


def test_info_reports_bad_classes(capsys):
    assert main(["info", "--classes", "3,3"]) == 2
    assert "lists a class more than once" in capsys.readouterr().err


def test_info_counts_folder_classes(capsys, image_folder):
    argv = ["info", "--data", "imagefolder", "--data-dir", str(image_folder)]
    assert main([*argv, "--image-size", "32", "--net", "imagenet_cnn"]) == 0
    out = capsys.readouterr().out
    assert "Networks for imagefolder: input 3x32x32, 3 classes" in out


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5", 5),
        ("0,2,4", [0, 2, 4]),
        ("0-3", [0, 1, 2, 3]),
        ("1-2,7", [1, 2, 7]),
        ("Sneaker, Bag", ["Sneaker", "Bag"]),
        ("T-shirt/top,3", ["T-shirt/top", 3]),
    ],
)
def test_parse_classes(text, expected):
    assert parse_classes(text) == expected


@pytest.mark.parametrize("text, fragment", [("1,,2", "empty"), ("4-1", "below")])
def test_parse_classes_rejects(text, fragment):
    with pytest.raises(argparse.ArgumentTypeError, match=fragment):
        parse_classes(text)


def test_info_class_names(capsys):
    assert main(["info", "--classes", "Sneaker,Bag,T-shirt/top"]) == 0
    assert "input 1x28x28, 3 classes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, expected",
    [
        ("channels=16", ("channels", 16)),
        ("hidden=64,32", ("hidden", (64, 32))),
        ("dropout=0.5", ("dropout", 0.5)),
        ("kernel-size=3", ("kernel_size", 3)),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["channels", "=3", "channels=", "hidden=a,b"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_arguments_round_trip():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    add_model_arguments(parser)
    args = parser.parse_args(
        ["--data", "digits", "--classes", "0-2", "--validation", "0.2"]
        + ["--net", "small_cnn", "--net-size", "channels=4"]
    )
    data = load_dataset_from_args(args, seed=1)
    assert data.num_classes == 3
    assert data.validation is not None
    model = model_from_args(args, data.input_shape, data.num_classes)
    assert model[0].out_channels == 4
    assert model(data.train.inputs[:2]).shape == (2, 3)


def test_default_arguments():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    add_model_arguments(parser)
    args = parser.parse_args([])
    assert args.data == "fashion-mnist"
    assert args.data_dir is None
    assert args.classes is None
    assert args.validation == 0
    assert args.net == "mnist_cnn"
    assert args.net_size == []


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="dataset-fashion-mnist is not installed",
)
def test_info_default_location_found(capsys):
    assert main(["info"]) == 0
    assert (
        "/usr/share/datasets/fashion-mnist (folder found; --load checks its files)"
        in capsys.readouterr().out
    )
