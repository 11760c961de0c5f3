"""Two CPU processes under torchrun meta-train like one that averages both."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from slstm.meta import MetaTrainer
from slstm.meta.trainer import STATE_FILE
from slstm.optim import load_checkpoint

from .conftest import TINY_ARGS

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(out, *options):
    """The command and environment of the tiny meta-training on two CPU ranks."""
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_loopback_port()),
        "-m", "slstm", "meta-train", *TINY_ARGS, *options, "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC, "GLOO_SOCKET_IFNAME": "lo"}
    env["OMP_NUM_THREADS"] = "1"
    return command, env


def _meta_train_two_ranks(out, *options):
    """Run the tiny meta-training on two CPU processes under torchrun."""
    command, env = _torchrun(out, *options, "--checkpoint-every", "1")
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_two_ranks_equal_one_process_averaging_them(tmp_path, tiny_config):
    episodes, horizon, unroll = 2, 10, 5  # four meta-steps
    out = tmp_path / "distributed"
    _meta_train_two_ranks(out, "--episodes", str(episodes), "--validate-every", "1")
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["world_size"] == 2
    assert len(state["rng"]) == 2

    # One process runs rank 0's and rank 1's episodes and averages their
    # meta-gradients itself.
    config = tiny_config(episodes=episodes, validate_every=0)
    trainer = MetaTrainer(config, progress=False)
    for episode in range(episodes):
        optimizees = [trainer.start_episode(episode, rank) for rank in (0, 1)]
        for _ in range(horizon // unroll):
            grads = []
            for optimizee in optimizees:
                rank_grads, usable, _ = trainer.truncation_gradients(optimizee, unroll)
                assert usable
                grads.append(rank_grads)
            averaged = [(a + b) / 2 for a, b in zip(*grads, strict=True)]
            assert trainer.apply_meta_gradients(averaged, True)
            for optimizee in optimizees:
                optimizee.detach_()
    assert trainer.counters.meta_steps == state["counters"]["meta_steps"] == 4

    distributed = load_checkpoint(out / "last.pt").nets.state_dict()
    for name, value in trainer.nets.state_dict().items():
        assert torch.equal(distributed[name], value), name
    # The two ranks trained on different tasks, so averaging mattered.
    single = MetaTrainer(config, progress=False)
    optimizee = single.start_episode(0, 0)
    rank_grads, _, _ = single.truncation_gradients(optimizee, unroll)
    other = single.start_episode(0, 1)
    other_grads, _, _ = single.truncation_gradients(other, unroll)
    assert any(
        not torch.equal(a, b) for a, b in zip(rank_grads, other_grads, strict=True)
    )


def test_two_ranks_follow_a_horizon_schedule(tmp_path):
    out = tmp_path / "curriculum"
    _meta_train_two_ranks(
        out, "--episodes", "2", "--horizon-schedule", "1:15", "--validate-every", "0"
    )
    state = torch.load(out / STATE_FILE, weights_only=True)
    # Episode 0 has 10 steps (2 truncations of 5), episode 1 has 15 (3).
    assert state["counters"]["meta_steps"] == 5
    assert state["totals"]["inner_steps"] == 2 * (10 + 15)


def _episode_rows(out) -> int:
    try:
        lines = (out / "metrics.csv").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(line.startswith("episode,") for line in lines)


def test_sigterm_saves_one_boundary_for_all_ranks(tmp_path):
    # No periodic checkpoint: the state on disk can only come from the stop.
    options = ("--validate-every", "0", "--checkpoint-every", "100000")
    interrupted = tmp_path / "interrupted"
    command, env = _torchrun(interrupted, "--episodes", "100000", *options)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while _episode_rows(interrupted) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "no episode finished within 120 s"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "stopping at the next meta-step" in stderr
    state = torch.load(interrupted / STATE_FILE, weights_only=True)
    episodes = state["counters"]["episode"]
    assert episodes >= 2
    assert state["counters"]["meta_steps"] == 2 * episodes  # 2 truncations each
    assert len(state["rng"]) == 2
    assert _episode_rows(interrupted) == episodes

    # Resumed to one more episode, it ends where an uninterrupted run ends.
    command, env = _torchrun(interrupted, "--resume", "--episodes", str(episodes + 1))
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = tmp_path / "straight"
    _meta_train_two_ranks(straight, "--episodes", str(episodes + 1), *options[:2])
    expected = load_checkpoint(straight / "last.pt").nets.state_dict()
    got = load_checkpoint(interrupted / "last.pt").nets.state_dict()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
