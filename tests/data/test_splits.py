"""Class subsets, validation splits and normalisation shared by in-memory sets."""

import numpy as np
import pytest
import torch

from slstm.data import DataSplits, TensorSplit, load_dataset


def test_digits_split_sizes():
    data = load_dataset("digits")
    assert isinstance(data, DataSplits)
    assert isinstance(data.train, TensorSplit)
    assert len(data.train) == 1500
    assert len(data.test) == 297
    assert data.validation is None
    assert data.input_shape == (1, 8, 8)
    assert data.num_classes == 10
    assert data.train.inputs.shape == (1500, 1, 8, 8)


def test_train_split_is_standardised():
    data = load_dataset("digits", validation=300)
    inputs = data.train.inputs.double()
    assert inputs.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert inputs.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # The held-out splits use the train statistics, so they are only close.
    assert abs(data.test.inputs.mean().item()) < 0.2
    assert abs(data.validation.inputs.mean().item()) < 0.2


def test_class_count_keeps_first_classes():
    full = load_dataset("digits")
    data = load_dataset("digits", classes=4)
    assert data.num_classes == 4
    assert data.class_names == ["0", "1", "2", "3"]
    assert set(data.train.targets.tolist()) == {0, 1, 2, 3}
    assert len(data.train) == int((full.train.targets < 4).sum())
    assert len(data.test) == int((full.test.targets < 4).sum())


def test_class_list_relabels_in_given_order():
    full = load_dataset("digits")
    data = load_dataset("digits", classes=[7, 2])
    assert data.class_names == ["7", "2"]
    assert data.num_classes == 2
    # Recover the original images: the subset keeps the original order, so the
    # k-th example of the subset is the k-th 7 or 2 of the full set.
    mask = (full.train.targets == 7) | (full.train.targets == 2)
    original = full.train.targets[mask]
    expected = torch.where(original == 7, 0, 1)
    torch.testing.assert_close(data.train.targets, expected)


def test_subset_statistics_use_subset_only():
    data = load_dataset("digits", classes=[1, 7])
    inputs = data.train.inputs.double()
    assert inputs.mean().item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "classes, fragment",
    [
        (1, "between 2 and 10"),
        (11, "between 2 and 10"),
        ([3, 3], "more than once"),
        ([0, 10], "class id 10"),
        ([4], "at least two"),
        ("0,1", "sequence of class ids"),
        ([0, 1.5], "is not an int"),
        (True, "must be None"),
    ],
)
def test_invalid_classes(classes, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_dataset("digits", classes=classes)


def _train_and_validation_rows(data):
    return data.train.inputs.flatten(1), data.validation.inputs.flatten(1)


def test_validation_is_disjoint_and_complete():
    full = load_dataset("digits")
    data = load_dataset("digits", validation=200, seed=3)
    assert len(data.validation) == 200
    assert len(data.train) == 1300
    # Both splits are normalised with the 1300-example statistics; undo that to
    # compare pixels with the full train split.
    mean, std = data.mean[0], data.std[0]
    pixels = torch.cat([data.train.inputs, data.validation.inputs]) * std + mean
    full_pixels = full.train.inputs * full.std[0] + full.mean[0]
    as_rows = {tuple(np.round(r, 4)) for r in pixels.flatten(1).double().numpy()}
    full_rows = {tuple(np.round(r, 4)) for r in full_pixels.flatten(1).double().numpy()}
    assert as_rows == full_rows
    labels = torch.cat([data.train.targets, data.validation.targets])
    assert (
        torch.bincount(labels).tolist() == torch.bincount(full.train.targets).tolist()
    )


def test_validation_depends_only_on_seed():
    first = load_dataset("digits", validation=0.1, seed=5)
    again = load_dataset("digits", validation=0.1, seed=5)
    other = load_dataset("digits", validation=0.1, seed=6)
    assert len(first.validation) == 150
    torch.testing.assert_close(first.validation.inputs, again.validation.inputs)
    torch.testing.assert_close(first.validation.targets, again.validation.targets)
    assert not torch.equal(first.validation.inputs, other.validation.inputs)


@pytest.mark.parametrize(
    "validation, fragment",
    [(1500, "out of range"), (-1, "out of range"), (1.0, "fraction"), ("10", "int")],
)
def test_invalid_validation(validation, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_dataset("digits", validation=validation)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="unknown data set 'svhn'.*fashion-mnist"):
        load_dataset("svhn")


def test_tensor_split_checks_shapes():
    with pytest.raises(ValueError, match="targets must have shape"):
        TensorSplit(torch.zeros(3, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs must have shape"):
        TensorSplit(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    split = TensorSplit(torch.zeros(3, 1, 2, 2), torch.arange(3))
    image, label = split[1]
    assert image.shape == (1, 2, 2)
    assert label.item() == 1


def test_validation_fraction_leaving_no_train():
    with pytest.raises(ValueError, match="leaves none for training"):
        load_dataset("digits", classes=2, validation=0.999)


def test_classes_absent_from_train(tmp_path, idx_arrays, write_idx_set):
    # Train labels cover only classes 0..4, so classes 5 and 6 have no examples.
    idx_arrays["train-labels"] %= 5
    write_idx_set(tmp_path / "idx", idx_arrays)
    with pytest.raises(ValueError, match=r"no training examples of class 5 \('5'\), 6"):
        load_dataset("mnist", tmp_path / "idx", classes=[5, 6])
    # All ten classes by default: the five empty ones are named, not trained on.
    with pytest.raises(ValueError, match=r"class 5 \('5'\), 6 \('6'\), 7"):
        load_dataset("mnist", tmp_path / "idx")
    assert load_dataset("mnist", tmp_path / "idx", classes=5).num_classes == 5


def test_classes_by_name_match_ids():
    by_name = load_dataset("digits", classes=["7", "2"])
    by_id = load_dataset("digits", classes=[7, 2])
    assert by_name.class_names == ["7", "2"]
    torch.testing.assert_close(by_name.train.targets, by_id.train.targets)
    torch.testing.assert_close(by_name.test.inputs, by_id.test.inputs)


def test_unknown_class_name_lists_classes():
    with pytest.raises(ValueError, match="class 'seven' .* its classes are 0, 1, 2"):
        load_dataset("digits", classes=["seven", "1"])
