"""Time and memory of one curvature step against a plain forward and backward.

The model is slstm.models.mnist_cnn at its default sizes: three 5x5 conv layers
with 64 maps, each followed by ReLU and 2x2 max-pooling, then fully connected
layers of 32, 32 and 10 units (226,442 parameters), on 28x28 inputs, batch 128,
float32. Every variant runs on the same inputs, and the
variants are interleaved round by round so that load from other processes hits
them alike. Times are medians over rounds, as wall time and as process CPU time.

Peak memory is the largest amount of tensor memory allocated during one step
above what was allocated before it: on CUDA from torch.cuda.max_memory_allocated,
on CPU by summing the allocations and frees that torch.profiler(profile_memory=
True) records, in order of their start times.

    PYTHONPATH=src python bench/curvature.py [--repeats 20] [--device auto]
"""

import argparse
import statistics
import time

import torch
from torch import nn

from slstm.curvature import backward
from slstm.models import mnist_cnn
from slstm.utils import resolve_device


def make_steps(model, loss_fn, inputs, targets, samples):
    def plain():
        loss = loss_fn(model(inputs), targets)
        loss.backward()

    def curvature(method):
        def step():
            backward(model, loss_fn, inputs, targets, method, samples=samples)

        return step

    return {
        "plain": plain,
        "becker-lecun": curvature("becker-lecun"),
        "gauss-newton": curvature("gauss-newton"),
        f"hutchinson ({samples} sample{'s' * (samples > 1)})": curvature("hutchinson"),
    }


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, steps, device, repeats, warmup):
    """Return {name: ([wall seconds], [process CPU seconds])} per round."""
    times = {name: ([], []) for name in steps}
    for round_index in range(warmup + repeats):
        for name, step in steps.items():
            model.zero_grad(set_to_none=True)
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            synchronize(device)
            if round_index >= warmup:
                times[name][0].append(time.perf_counter() - start)
                times[name][1].append(time.process_time() - start_cpu)
    return times


def peak_memory(model, step, device):
    """Return the peak tensor memory (bytes) one step allocates above its start."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        step()
    live = peak = 0
    for event in sorted(profile.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds")
    parser.add_argument("--samples", type=int, default=1, help="Hutchinson probes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = mnist_cnn((1, 28, 28), 10).to(device)
    loss_fn = nn.CrossEntropyLoss()
    inputs = torch.randn(args.batch_size, 1, 28, 28, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    steps = make_steps(model, loss_fn, inputs, targets, args.samples)
    parameters = sum(p.numel() for p in model.parameters())

    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU "
        f"threads, batch {args.batch_size}, {parameters} parameters, float32, "
        f"{args.repeats} rounds after {args.warmup} warm-up rounds"
    )
    times = time_steps(model, steps, device, args.repeats, args.warmup)
    memory = {name: peak_memory(model, step, device) for name, step in steps.items()}

    wall = {name: statistics.median(t[0]) for name, t in times.items()}
    cpu = {name: statistics.median(t[1]) for name, t in times.items()}
    print()
    print(
        "| step | wall (ms) | wall / plain | CPU (ms) | CPU / plain "
        "| peak memory (MB) | memory / plain |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in steps:
        print(
            f"| {name} | {wall[name] * 1e3:.0f} | {wall[name] / wall['plain']:.2f} "
            f"| {cpu[name] * 1e3:.0f} | {cpu[name] / cpu['plain']:.2f} "
            f"| {memory[name] / 2**20:.1f} | {memory[name] / memory['plain']:.2f} |"
        )
    print(
        "\nwall and CPU are medians over rounds; CPU is the process CPU time of "
        "all threads, which waiting for a busy core does not inflate"
    )
    plain_time = wall["plain"]
    probe = wall[next(n for n in steps if n.startswith("hutch"))]
    probe_cost = (probe - plain_time) / args.samples
    print(
        f"\nexact: not run; it needs one Hessian-vector product per parameter, "
        f"about {parameters} x {probe_cost * 1e3:.0f} ms = "
        f"{parameters * probe_cost / 3600:.1f} h (estimate from the Hutchinson step)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
