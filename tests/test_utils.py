"""Helpers shared by the subpackages."""

import torch

from slstm.utils import probe_generator


def test_probe_generator_repeats_per_seed():
    first = torch.randint(0, 2, (64,), generator=probe_generator(3, "cpu"))
    again = torch.randint(0, 2, (64,), generator=probe_generator(3, "cpu"))
    assert torch.equal(first, again)


def test_probes_differ_from_minibatch_stream():
    # The minibatch generator of a run is seeded with the run's seed itself.
    batches = torch.Generator().manual_seed(3)
    probes = probe_generator(3, "cpu")
    assert not torch.equal(
        torch.randint(0, 2, (64,), generator=batches),
        torch.randint(0, 2, (64,), generator=probes),
    )
