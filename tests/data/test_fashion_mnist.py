"""The real Fashion-MNIST files installed by `apt-get install dataset-fashion-mnist`."""

import os

import pytest
import torch

from slstm.data import load_dataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

pytestmark = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR),
    reason=f"{FASHION_MNIST_DIR} not found (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def fashion():
    return load_dataset(validation=5000, seed=0)


def test_fashion_mnist_sizes(fashion):
    assert fashion.input_shape == (1, 28, 28)
    assert fashion.num_classes == 10
    assert len(fashion.train) == 55000
    assert len(fashion.validation) == 5000
    assert len(fashion.test) == 10000
    assert fashion.train.inputs.shape == (55000, 1, 28, 28)


def test_fashion_mnist_classes_balanced(fashion):
    # Both official splits have exactly 6000 / 1000 images per class.
    counts = torch.bincount(
        torch.cat([fashion.train.targets, fashion.validation.targets])
    )
    assert counts.tolist() == [6000] * 10
    assert torch.bincount(fashion.test.targets).tolist() == [1000] * 10


def test_fashion_mnist_statistics(fashion):
    # All 60000 training images have pixel mean 0.2860 and std 0.3530; any
    # random 55000 of them stay within 0.002 of that.
    assert fashion.mean[0] == pytest.approx(0.2860, abs=2e-3)
    assert fashion.std[0] == pytest.approx(0.3530, abs=2e-3)
    assert fashion.train.inputs.mean().item() == pytest.approx(0.0, abs=1e-4)
