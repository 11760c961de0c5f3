"""Random minibatches: shapes, reproducibility and full coverage of each epoch."""

import itertools

import pytest
import torch

from slstm.data import TensorSplit, batch_iterator, evaluation_batches


@pytest.fixture
def split():
    inputs = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 2, 3, 3)
    return TensorSplit(inputs.contiguous(), torch.arange(10))


def _take(iterator, count):
    return list(itertools.islice(iterator, count))


def test_batches_have_shape_and_match_targets(split):
    batches = _take(batch_iterator(split, 4, generator=torch.Generator()), 5)
    for inputs, targets in batches:
        assert inputs.shape == (4, 2, 3, 3)
        assert targets.shape == (4,)
        # Row i of the split contains the value i, so inputs and targets must agree.
        torch.testing.assert_close(inputs[:, 0, 0, 0], targets.float())


def test_same_seed_same_batches(split):
    first = _take(
        batch_iterator(split, 3, generator=torch.Generator().manual_seed(7)), 6
    )
    again = _take(
        batch_iterator(split, 3, generator=torch.Generator().manual_seed(7)), 6
    )
    other = _take(
        batch_iterator(split, 3, generator=torch.Generator().manual_seed(8)), 6
    )
    assert [t.tolist() for _, t in first] == [t.tolist() for _, t in again]
    assert [t.tolist() for _, t in first] != [t.tolist() for _, t in other]


def test_drop_last_false_covers_each_epoch(split):
    batches = _take(
        batch_iterator(split, 4, generator=torch.Generator(), drop_last=False), 6
    )
    sizes = [len(t) for _, t in batches]
    assert sizes == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        seen = torch.cat([t for _, t in epoch]).sort().values
        assert seen.tolist() == list(range(10))


def test_drop_last_skips_partial_batch(split):
    batches = _take(batch_iterator(split, 4, generator=torch.Generator()), 4)
    assert [len(t) for _, t in batches] == [4, 4, 4, 4]
    # Each epoch yields two batches of distinct examples.
    first_epoch = torch.cat([t for _, t in batches[:2]])
    assert len(set(first_epoch.tolist())) == 8


def test_batch_iterator_moves_to_device(split):
    inputs, targets = next(
        batch_iterator(split, 2, generator=torch.Generator(), device="meta")
    )
    assert inputs.device.type == "meta"
    assert targets.device.type == "meta"


@pytest.mark.parametrize(
    "batch_size, fragment",
    [(0, "positive int"), (2.5, "positive int"), (11, "larger than the split")],
)
def test_invalid_batch_size(split, batch_size, fragment):
    with pytest.raises(ValueError, match=fragment):
        batch_iterator(split, batch_size, generator=torch.Generator())


def test_generator_required(split):
    with pytest.raises(ValueError, match="torch.Generator"):
        batch_iterator(split, 2, generator=0)


def test_evaluation_batches_in_order(split):
    batches = list(evaluation_batches(split, 4))
    assert [len(t) for _, t in batches] == [4, 4, 2]
    assert torch.cat([t for _, t in batches]).tolist() == list(range(10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dataset_on_cuda():
    from slstm.data import load_dataset

    data = load_dataset("digits", validation=100, device="cuda")
    assert data.train.inputs.is_cuda
    assert data.validation.targets.is_cuda
    generator = torch.Generator().manual_seed(0)
    inputs, targets = next(batch_iterator(data.train, 32, generator=generator))
    assert inputs.is_cuda
    assert targets.is_cuda
    cpu = data.train.to("cpu")
    inputs_cpu, targets_cpu = next(
        batch_iterator(cpu, 32, generator=torch.Generator().manual_seed(0))
    )
    torch.testing.assert_close(inputs.cpu(), inputs_cpu)
    assert targets.cpu().tolist() == targets_cpu.tolist()
