"""Speed and memory of meta-training, against plain SLSTM training in the same run.

Measures, on one network and data set:

- one truncation of ``T`` steps with its meta-update (forward passes with
  curvature, learned updates with their graph, the meta-backward, Adam), as
  ``slstm meta-train`` runs it;
- ``T`` plain steps of the same SLSTM optimizer as a user trains with it
  (``slstm.curvature.backward`` then ``LearnedOptimizer.step``);

and prints inner steps per second of both, the ratio of their times (target:
at most 2.5) and the peak memory each adds above the process's baseline. On
CPU the peak is the resident set size sampled every millisecond; on CUDA it
is ``torch.cuda.max_memory_allocated``.

    PYTHONPATH=src python bench/meta_training.py                # paper's MNIST CNN
    PYTHONPATH=src python bench/meta_training.py --net-sizes channels=16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import threading
import time

import torch
from torch import nn

from slstm.curvature import backward
from slstm.meta import MetaTrainConfig, MetaTrainer
from slstm.meta.config import parse_net_sizes
from slstm.optim import LearnedOptimizer
from slstm.utils import resolve_device


class PeakMemory:
    """Peak memory above the level at entry, in MiB, of the code in the block."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _resident_bytes()
        self._peak = self._base
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self._peak = max(self._peak, _resident_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._running = False
            self._thread.join()
            peak = max(self._peak, _resident_bytes())
        self.peak_mib = (peak - self._base) / 2**20
        return False


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_truncation(trainer: MetaTrainer, steps: int) -> float:
    """Seconds for one truncation of a fresh episode plus its meta-update."""
    optimizee = trainer.start_episode(0)
    _synchronize(trainer.device)
    started = time.perf_counter()
    grads, usable, result = trainer.truncation_gradients(optimizee, steps)
    trainer.apply_meta_gradients(grads, usable)
    optimizee.detach_()
    _synchronize(trainer.device)
    elapsed = time.perf_counter() - started
    if len(result.losses) != steps:
        raise RuntimeError("the optimizee diverged during the benchmark")
    return elapsed


def time_plain_steps(trainer: MetaTrainer, steps: int) -> float:
    """Seconds for ``steps`` plain SLSTM steps with the same update networks."""
    optimizee = trainer.start_episode(0)
    model = optimizee.model
    optimizer = LearnedOptimizer(model, trainer.nets, trainer.optimizer_config)
    loss_fn = nn.CrossEntropyLoss()
    batches = [next(optimizee.batches) for _ in range(steps)]
    _synchronize(trainer.device)
    started = time.perf_counter()
    with torch.no_grad():
        for inputs, targets in batches:
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                backward(
                    model,
                    loss_fn,
                    inputs,
                    targets,
                    method=trainer.config.curvature_method,
                )
            optimizer.step()
    _synchronize(trainer.device)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--net", default="mnist_cnn")
    parser.add_argument("--net-sizes", type=parse_net_sizes, default={})
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--unroll", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--recompute-updates", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as out:
        config = MetaTrainConfig(
            optimizer="slstm",
            data=args.data,
            data_dir=args.data_dir,
            net=args.net,
            net_sizes=args.net_sizes,
            batch_size=args.batch_size,
            unroll=args.unroll,
            horizon=args.unroll,
            validate_every=0,
            device=str(device),
            out=out,
            recompute_updates=args.recompute_updates,
        )
        trainer = MetaTrainer(config, progress=False)
        # A non-zero read-out, as after some meta-training, so the updates are real.
        with torch.no_grad():
            for net in trainer.nets.values():
                net.readout.weight.normal_(0.0, 0.05)
        coordinates = sum(p.numel() for p in trainer.start_episode(0).params)

        # Warm-up of both paths (allocator, kernels), not timed.
        time_truncation(trainer, 2)
        time_plain_steps(trainer, 2)
        truncation_times, plain_times = [], []
        with PeakMemory(device) as plain_memory:
            plain_times.append(time_plain_steps(trainer, args.unroll))
        with PeakMemory(device) as truncation_memory:
            truncation_times.append(time_truncation(trainer, args.unroll))
        for _ in range(args.repeats - 1):
            plain_times.append(time_plain_steps(trainer, args.unroll))
            truncation_times.append(time_truncation(trainer, args.unroll))

    truncation = statistics.median(truncation_times)
    plain = statistics.median(plain_times)
    ratios = [t / p for t, p in zip(truncation_times, plain_times, strict=True)]
    print(
        f"machine: {platform.machine()}, {device}, torch {torch.__version__}, "
        f"torch.set_num_threads({args.threads})"
    )
    print(
        f"network: {args.net} {args.net_sizes or '(default sizes)'}, "
        f"{coordinates} parameters, data {args.data}, batch {args.batch_size}, "
        f"T = {args.unroll}, {args.repeats} repeats (median), "
        f"recompute_updates={args.recompute_updates}"
    )
    print(
        f"meta-training truncation + meta-update: {truncation:.3f} s, "
        f"{args.unroll / truncation:.2f} inner steps/s, "
        f"peak memory +{truncation_memory.peak_mib:.0f} MiB"
    )
    print(
        f"plain SLSTM training, {args.unroll} steps: {plain:.3f} s, "
        f"{args.unroll / plain:.2f} steps/s, "
        f"peak memory +{plain_memory.peak_mib:.0f} MiB"
    )
    print(
        f"ratio truncation / plain steps: {truncation / plain:.2f} "
        f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; target <= 2.5)"
    )


if __name__ == "__main__":
    main()
