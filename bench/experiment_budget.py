"""Project the wall time of `slstm experiment PRESET` from measured step costs.

Times one training step of each optimizer and one evaluation on the preset's
network at the chosen scale, as ratios to an SGD step measured in the same
process. The projection multiplies these costs by the number of steps and
evaluations of the default experiment (tuning, comparison, learning-rate
sensitivity, horizon).
With --run it also runs the experiment and prints the measured time per phase.

    PYTHONPATH=src python bench/experiment_budget.py [--run] [--threads N]

Learned optimizers are timed with freshly initialised update networks, which
cost the same as trained ones. Both divergence (a run ends early) and the
checkpoints' horizon (taken as 100 steps here) can make the real run shorter.
"""

import argparse
import statistics
import sys
import tempfile
import time

import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="fashion-mnist")
    parser.add_argument("--scale", default="auto")
    parser.add_argument("--steps", type=int, default=30, help="timed steps each")
    parser.add_argument(
        "--threads", type=int, default=None, help="default: the scale's setting"
    )
    parser.add_argument("--run", action="store_true", help="also run the experiment")
    args = parser.parse_args(argv)

    from slstm.experiments.presets import OPTIMIZER_NAMES, get_preset, resolve_scale
    from slstm.experiments.runner import ExperimentConfig, resolve_config
    from slstm.utils import resolve_device

    device = resolve_device("auto")
    preset = get_preset(args.preset)
    scale, reason = resolve_scale(args.scale, device)
    config = resolve_config(
        ExperimentConfig(preset=args.preset, threads=args.threads), preset, scale
    )
    # The experiment's own thread setting (1 at small scale unless --threads).
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    print(f"preset {args.preset}, scale {scale} ({reason})")
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    wall, cpu = measure_costs(config, preset, device, args.steps)
    print(
        f"\none step: wall time (median of {args.steps}), CPU time of this process "
        "(mean), and the wall-time ratio to an SGD step:"
    )
    for name in [*OPTIMIZER_NAMES, "eval"]:
        print(
            f"  {name:16s} {1000 * wall[name]:8.1f} ms  {1000 * cpu[name]:8.1f} ms CPU"
            f"  {wall[name] / wall['sgd']:5.2f}x"
        )
    print(
        f"  (eval: {config.train_eval_size} training and "
        f"{config.test_eval_size or 'all'} test images)"
    )

    # Wall time includes waiting for other processes on a shared machine. The
    # CPU-time projection estimates the same run on an idle machine, and it is
    # exact only for one thread.
    by_wall, by_cpu = project(config, wall), project(config, cpu)
    print("\nprojected time of the default experiment, from wall / CPU time:")
    for phase in by_wall:
        print(f"  {phase:28s} {by_wall[phase]:7.1f} s  {by_cpu[phase]:7.1f} s")
    total_wall, total_cpu = sum(by_wall.values()), sum(by_cpu.values())
    print(
        f"  {'total':28s} {total_wall:7.1f} s  {total_cpu:7.1f} s "
        f"({total_wall / 60:.1f} / {total_cpu / 60:.1f} min)"
    )

    if args.run:
        from slstm.experiments import run_experiment

        with tempfile.TemporaryDirectory() as out:
            config = ExperimentConfig(
                preset=args.preset, scale=args.scale, out=f"{out}/run"
            )
            started = time.perf_counter()
            result = run_experiment(config, progress=False, log=lambda _: None)
            wall = time.perf_counter() - started
        print("\nmeasured:")
        for phase, seconds in result.record.timing.items():
            print(f"  {phase:28s} {seconds:7.1f} s")
        print(f"  wall time {wall:.1f} s = {wall / 60:.1f} min")
    return 0


def measure_costs(config, preset, device, steps):
    """Return seconds per step of each optimizer and per evaluation."""
    from slstm.data import load_dataset
    from slstm.experiments.learned import LearnedSource
    from slstm.experiments.presets import LEARNED, META_TRAIN_OPTIONS, OPTIMIZER_NAMES
    from slstm.experiments.runner import _fixed_subset
    from slstm.experiments.studies import RunContext
    from slstm.experiments.training import EvalSets, evaluate
    from slstm.models import build_model
    from slstm.optim import Checkpoint, LearnedOptimizerConfig, create_update_nets

    splits = load_dataset(config.data, config.data_dir, validation=0, device=device)

    def new_model():
        return build_model(
            preset.model, splits.input_shape, splits.num_classes, **config.model_sizes
        )

    learned = {}
    for name in LEARNED:
        options = META_TRAIN_OPTIONS[name]
        optimizer_config = LearnedOptimizerConfig.preset(
            options["optimizer"],
            curvature_method=options.get("curvature_method", "becker-lecun"),
        )
        nets = create_update_nets(optimizer_config).to(device)
        learned[name] = LearnedSource(
            Checkpoint(nets=nets, config=optimizer_config, provenance={}), name
        )
    eval_sets = EvalSets(
        _fixed_subset(splits.train, config.train_eval_size),
        _fixed_subset(splits.test, config.test_eval_size or None),
    )
    model = new_model().to(device)
    context = RunContext(
        model=model,
        new_model=new_model,
        splits=splits,
        batch_size=config.batch_size,
        device=device,
        eval_sets=eval_sets,
        learned=learned,
        curvature_method=config.curvature_method,
    )
    rates = {"sgd": 0.01, "rmsprop": 1e-4, "adam": 1e-4, "diagonal-newton": 1e-3}
    # One untimed run first, so one-time costs (allocator, kernel choice) do not
    # land on the first optimizer timed.
    context.run("bench", "sgd", 0, rates["sgd"], min(steps, 5), [0])
    wall, cpu = {}, {}
    for name in OPTIMIZER_NAMES:
        started = time.process_time()
        run = context.run("bench", name, 0, rates.get(name, 1.0), steps, [])
        cpu[name] = (time.process_time() - started) / len(run.steps)
        if run.diverged:
            print(
                f"warning: {name} diverged at step {run.diverged_at}", file=sys.stderr
            )
        wall[name] = statistics.median(run.step_time_s)
    wall_times, cpu_times = [], []
    for _ in range(3):
        started, started_cpu = time.perf_counter(), time.process_time()
        evaluate(model, eval_sets.loss_split, device)
        evaluate(model, eval_sets.error_split, device)
        wall_times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - started_cpu)
    wall["eval"] = statistics.median(wall_times)
    cpu["eval"] = statistics.median(cpu_times)
    return wall, cpu


def project(config, costs):
    """Return projected seconds per phase of the experiment ``config`` runs."""
    from slstm.experiments.presets import BASELINES, LEARNED, OPTIMIZER_NAMES
    from slstm.experiments.studies import horizon_eval_steps
    from slstm.experiments.training import evaluation_steps

    steps = config.steps
    evals = len(evaluation_steps(steps, config.eval_every))
    per_run = {name: steps * costs[name] + evals * costs["eval"] for name in costs}
    # A tuning trial evaluates once, on the validation split.
    validation_eval = (
        costs["eval"]
        * config.validation_size
        / (config.train_eval_size + (config.test_eval_size or 10_000))
    )
    phases = {
        "tuning": sum(
            config.tune_trials * (steps * costs[name] + validation_eval)
            for name in BASELINES
        ),
        "comparison": config.seeds * sum(per_run[n] for n in OPTIMIZER_NAMES),
    }
    multipliers = [m for m in set(config.lr_multipliers) if m != 1.0]
    # Sensitivity runs evaluate at step 0 and at the end only.
    phases["learning-rate sensitivity"] = (
        config.study_seeds
        * len(multipliers)
        * sum(steps * costs[n] + 2 * costs["eval"] for n in OPTIMIZER_NAMES)
    )
    horizon = config.horizon_factor * 100
    horizon_evals = len(horizon_eval_steps(horizon, config.eval_every, 100))
    phases["horizon"] = config.horizon_seeds * sum(
        horizon * costs[name] + horizon_evals * costs["eval"]
        for name in ("adam", *LEARNED)
    )
    return phases


if __name__ == "__main__":
    sys.exit(main())
