"""Shared set-up of the meta-training tests: a tiny configuration on digits."""

import pytest
import torch

from slstm.meta.config import MetaTrainConfig

# 8x8 digits, a one-conv network with 4 maps and 8 hidden units (about 700
# parameters): an episode takes a fraction of a second on one core.
TINY = dict(
    data="digits",
    net="small_cnn",
    net_sizes={"channels": 4, "hidden": 8},
    validation=200,
    episodes=3,
    horizon=10,
    unroll=5,
    batch_size=32,
    validate_every=2,
    validation_tasks=1,
    checkpoint_every=1,
    device="cpu",
    num_threads=1,
)

TINY_ARGS = [
    "--data", "digits",
    "--net", "small_cnn",
    "--net-sizes", "channels=4,hidden=8",
    "--validation", "200",
    "--horizon", "10",
    "--unroll", "5",
    "--batch-size", "32",
    "--validation-tasks", "1",
    "--device", "cpu",
    "--threads", "1",
    "--no-progress",
]  # fmt: skip


@pytest.fixture
def tiny_config(tmp_path):
    def make(**changes):
        values = {**TINY, "out": str(tmp_path / "run"), **changes}
        return MetaTrainConfig(**values)

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    # Bitwise comparisons between runs need the same reduction order.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
