"""Synthetic experiment records for the record, summary and plot tests."""

import math

import pytest

from slstm.experiments.presets import OPTIMIZER_NAMES
from slstm.experiments.records import ExperimentRecord, RunRecord

STEPS = 20
EVAL_EVERY = 5
SEEDS = (0, 1, 2)
# Loss decay rate per step of each optimizer's synthetic curve.
RATES = {
    "sgd": 0.02,
    "rmsprop": 0.04,
    "adam": 0.05,
    "diagonal-newton": 0.03,
    "lstm": 0.045,
    "slstm": 0.08,
    "slstm-hutchinson": 0.07,
}


def synthetic_run(study, name, seed, steps=STEPS, multiplier=1.0, diverge_at=None):
    """Return a run whose loss decays as 2.3 exp(-rate t), shifted per seed."""
    rate = RATES[name] * multiplier**0.1
    offset = 0.01 * seed
    run = RunRecord(study=study, optimizer=name, seed=seed, lr=0.01 * multiplier)
    run.lr_multiplier = multiplier
    for step in range(steps + 1):
        if step > 0:
            loss = 2.3 * math.exp(-rate * (step - 1)) + offset
            if step == diverge_at:
                loss = math.nan
            run.steps.append(step)
            run.minibatch_loss.append(loss)
            run.step_time_s.append(0.001 * (1 + seed))
            if step == diverge_at:
                run.diverged_at = step
                break
        if step % EVAL_EVERY == 0 or step == steps:
            run.eval_steps.append(step)
            run.train_loss.append(2.3 * math.exp(-rate * step) + offset)
            run.test_error.append(0.9 * math.exp(-rate * step) + 0.1 + offset)
    run.wall_time_s = sum(run.step_time_s) + 0.5
    return run


def synthetic_record(diverging=True, studies=True):
    """Return a record with every optimizer on three seeds and both studies.

    With ``diverging`` the SGD run of seed 2 diverges at step 7.
    """
    runs = []
    for seed in SEEDS:
        for name in OPTIMIZER_NAMES:
            diverge = 7 if diverging and name == "sgd" and seed == 2 else None
            runs.append(synthetic_run("main", name, seed, diverge_at=diverge))
    setup = {
        "scale": "small",
        "scale_reason": "--scale small was requested",
        "device": "cpu",
        "seeds": list(SEEDS),
        "batch_size": 8,
        "command": "slstm experiment fashion-mnist",
        "data": {
            "name": "fashion-mnist",
            "dir": "/tmp/data",
            "train": 100,
            "validation": 20,
            "test": 50,
            "train_eval": 64,
            "test_eval": 50,
            "num_classes": 10,
            "input_shape": [1, 28, 28],
        },
        "model": {"name": "mnist_cnn", "sizes": {"channels": 4}, "parameters": 1234},
    }
    if studies:
        for seed in SEEDS[:2]:
            for name in OPTIMIZER_NAMES:
                for multiplier in (0.1, 10.0):
                    diverge = 3 if multiplier == 10.0 and name == "rmsprop" else None
                    runs.append(
                        synthetic_run(
                            "lr-sensitivity",
                            name,
                            seed,
                            multiplier=multiplier,
                            diverge_at=diverge,
                        )
                    )
            for name in ("adam", "lstm", "slstm"):
                diverge = 40 if name == "lstm" and seed == 1 else None
                runs.append(
                    synthetic_run("horizon", name, seed, steps=50, diverge_at=diverge)
                )
        setup["lr_sensitivity"] = {
            "seeds": list(SEEDS[:2]),
            "multipliers": [0.1, 1.0, 10.0],
        }
        setup["horizon"] = {
            "seeds": list(SEEDS[:2]),
            "factor": 10,
            "meta_horizon": 5,
            "meta_horizon_source": "from the checkpoints' provenance: SLSTM 5",
            "steps": 50,
            "optimizers": ["adam", "lstm", "slstm"],
        }
    learning_rates = {
        name: {
            "lr": 0.01,
            "source": "tuned",
            "search_range": [1e-4, 1.0],
            "steps": STEPS,
            "best_score": 0.5,
            "trials": [[0.01, 0.5], [0.1, math.inf]],
        }
        for name in OPTIMIZER_NAMES[:4]
    }
    learning_rates["lstm"] = {"lr": 1.0, "source": "checkpoint"}
    learning_rates["slstm"] = {"lr": 1.0, "source": "checkpoint"}
    checkpoints = {
        name: {
            "source": f"{name}-fashion-mnist",
            "note": "shipped checkpoint",
            "provenance": {"net": "mnist_cnn", "horizon": 5, "episodes": 3},
        }
        for name in ("lstm", "slstm")
    }
    return ExperimentRecord(
        config={"preset": "fashion-mnist", "steps": STEPS, "eval_every": EVAL_EVERY},
        setup=setup,
        learning_rates=learning_rates,
        checkpoints=checkpoints,
        runs=runs,
        timing={"comparison": 1.5, "total": 2.0},
    )


@pytest.fixture
def record():
    return synthetic_record()


@pytest.fixture
def make_record():
    return synthetic_record


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Run this package's tiny networks on one thread.

    Their tensors are far too small to gain from intra-op threads, and on a
    loaded machine extra threads only wait for each other.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
