"""Time a full training step per optimizer and measure the learned optimizers'
memory per parameter.

    PYTHONPATH=src python bench/optimizers.py [--repeats 10] [--threads N]

Part 1 times a full step on the MNIST CNN (three 5x5 conv layers with 64 maps,
FC 32, FC 32; 226,442 parameters) at batch 128 on 28x28 inputs: forward,
backward (or the curvature pass, for the optimizers that read the diagonal
Hessian) and update. It prints each optimizer's median step time and its ratio
to Adam's, measured in the same run with the optimizers interleaved. The update
networks are freshly initialised, which costs the same time as trained ones.

Part 2 times one forward of the update network's LSTM against two
``nn.LSTMCell`` layers computing the same numbers.

Part 3 runs two steps of each learned optimizer (and Adam, for scale) on one
flat parameter tensor of 1M and 10M coordinates, each in a fresh process, and
prints the peak resident memory above the process's baseline per coordinate
(read from /proc, so Linux only);
equal bytes per coordinate at both sizes means memory linear in the parameter
count.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import slstm.curvature
import slstm.models
import slstm.optim

STEP_OPTIMIZERS = ("adam", "sgd", "rmsprop", "diagonal-newton", "lstm", "slstm")


def build(name, model):
    spec = slstm.optim.OPTIMIZERS[name]
    if spec.learned:
        config = slstm.optim.LearnedOptimizerConfig.preset(name)
        nets = slstm.optim.create_update_nets(config)
        return spec.make(model, nets=nets, config=config)
    return spec.make(model.parameters())


def time_steps(repeats, batch_size, seed=0):
    torch.manual_seed(seed)
    inputs = torch.randn(batch_size, 1, 28, 28)
    targets = torch.randint(0, 10, (batch_size,))
    loss_fn = nn.CrossEntropyLoss()
    setups = {}
    for name in STEP_OPTIMIZERS:
        model = slstm.models.build_model("mnist_cnn", (1, 28, 28), 10)
        setups[name] = (model, build(name, model))

    def step(name):
        model, optimizer = setups[name]
        optimizer.zero_grad()
        if slstm.optim.OPTIMIZERS[name].needs_curvature:
            slstm.curvature.backward(model, loss_fn, inputs, targets)
        else:
            loss_fn(model(inputs), targets).backward()
        optimizer.step()

    times = {name: [] for name in STEP_OPTIMIZERS}
    for name in STEP_OPTIMIZERS:  # warm-up: allocate state and caches
        step(name)
    for _ in range(repeats):
        for name in STEP_OPTIMIZERS:
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def time_update_only(repeats, size=226_442):
    """Median time of the optimizer update alone on ``size`` coordinates."""
    results = {}
    for name in STEP_OPTIMIZERS:
        param = nn.Parameter(torch.randn(size))
        optimizer = build_flat(name, param)
        param.grad = torch.randn(size)
        param.hessian_diag = torch.rand(size)
        optimizer.step()
        values = []
        for _ in range(repeats):
            start = time.perf_counter()
            optimizer.step()
            values.append(time.perf_counter() - start)
        results[name] = statistics.median(values)
    return results


def time_cell_against_lstm_cell(repeats, size=65_536):
    """Minimum time of one forward of the update network's two-layer LSTM and of
    two ``nn.LSTMCell`` layers with the same weights, on ``size`` coordinates."""
    torch.manual_seed(0)
    net = slstm.optim.UpdateNet(4)
    cells = [nn.LSTMCell(4, 20), nn.LSTMCell(20, 20)]
    for layer, cell in enumerate(cells):
        weight_ih, weight_hh, bias_ih, bias_hh = net.lstm.layer_weights(layer)
        cell.weight_ih.data.copy_(weight_ih)
        cell.weight_hh.data.copy_(weight_hh)
        cell.bias_ih.data.copy_(bias_ih)
        cell.bias_hh.data.copy_(bias_hh)
    features = torch.randn(size, 4)
    state = (torch.randn(2, 20, size), torch.randn(2, 20, size))
    cell_state = [
        (state[0][k].t().contiguous(), state[1][k].t().contiguous()) for k in (0, 1)
    ]

    def run_cells():
        hidden, _ = cells[0](features, cell_state[0])
        return cells[1](hidden, cell_state[1])[0]

    def run_net():
        return net.lstm(features.t(), state)[0]

    times = {"UpdateNet LSTM": [], "2 x nn.LSTMCell": []}
    with torch.no_grad():
        difference = (run_net().t() - run_cells()).abs().max().item()
        for _ in range(repeats):
            for label, function in (
                ("UpdateNet LSTM", run_net),
                ("2 x nn.LSTMCell", run_cells),
            ):
                start = time.perf_counter()
                function()
                times[label].append(time.perf_counter() - start)
    return {label: min(values) for label, values in times.items()}, difference


def build_flat(name, param):
    spec = slstm.optim.OPTIMIZERS[name]
    groups = [{"params": [param], "kind": "fc"}]
    if spec.learned:
        config = slstm.optim.LearnedOptimizerConfig.preset(name)
        return spec.make(
            groups, nets=slstm.optim.create_update_nets(config), config=config
        )
    return spec.make(groups)


def _resident_bytes(field):
    """Return ``VmRSS`` or ``VmHWM`` (peak) of this process from /proc, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory_child(name, size):
    """Run in a fresh process: print the growth of the peak resident memory over
    two steps, in bytes, and the optimizer's state size."""
    param = nn.Parameter(torch.randn(size))
    param.grad = torch.randn(size)
    param.hessian_diag = torch.rand(size)
    optimizer = build_flat(name, param)
    baseline = _resident_bytes("VmRSS")
    # Writing 5 to clear_refs resets the peak (VmHWM) to the current resident
    # size (Linux 4.0 and later), so earlier peaks such as torch's import do not
    # hide this step's.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    optimizer.step()
    optimizer.step()
    peak = _resident_bytes("VmHWM")
    state = sum(
        t.numel() * t.element_size()
        for entry in optimizer.state.values()
        for t in entry.values()
        if isinstance(t, torch.Tensor)
    )
    print(json.dumps({"peak_growth": peak - baseline, "state": state}))


def measure_memory(name, size):
    command = [sys.executable, __file__, "--memory-child", name, str(size)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps each")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--sizes",
        default="1000000,10000000",
        help="comma-separated coordinate counts for the memory check",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, metavar=("NAME", "SIZE"))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        peak_memory_child(args.memory_child[0], int(args.memory_child[1]))
        return 0

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"median of {args.repeats}"
    )
    steps = time_steps(args.repeats, args.batch_size)
    updates = time_update_only(args.repeats)
    print(f"{'optimizer':<16} {'step s':>8} {'/ Adam':>7} {'update s':>9}")
    for name in STEP_OPTIMIZERS:
        print(
            f"{name:<16} {steps[name]:>8.4f} {steps[name] / steps['adam']:>7.2f} "
            f"{updates[name]:>9.4f}"
        )

    cell_times, difference = time_cell_against_lstm_cell(args.repeats)
    print(f"\ntwo-layer LSTM forward on 65,536 coordinates (minimum of {args.repeats})")
    for label, seconds in cell_times.items():
        print(f"{label:<16} {seconds:>8.4f} s")
    print(f"max difference of the top hidden state: {difference:.1e}")

    if args.skip_memory:
        return 0
    print(
        f"\n{'optimizer':<16} {'size':>10} {'state B/param':>14} {'peak B/param':>13}"
    )
    for name in ("adam", "lstm", "slstm"):
        for size in (int(text) for text in args.sizes.split(",")):
            result = measure_memory(name, size)
            print(
                f"{name:<16} {size:>10} {result['state'] / size:>14.1f} "
                f"{result['peak_growth'] / size:>13.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
