"""The runs of an experiment: tuning, the comparison and the two extra studies."""

import copy
import math
from dataclasses import dataclass, field

import torch

from .learned import learned_factory
from .presets import DISPLAY_NAMES, LEARNED, LR_SEARCH_RANGES
from .training import EvalSets, OptimizerFactory, evaluation_steps, train_run
from .tuning import stratified_search

# Tuning trains from its own seed, so no evaluation seed takes part in tuning.
TUNING_SEED_OFFSET = 10_000


@dataclass
class RunContext:
    """Network, data, device and learned optimizers shared by an experiment's runs."""

    model: torch.nn.Module
    new_model: object
    splits: object
    batch_size: int
    device: torch.device
    eval_sets: EvalSets
    learned: dict
    curvature_method: str
    _initial_states: dict = field(default_factory=dict)

    def initial_state(self, seed):
        """Return the initialisation of ``seed``, the same for every optimizer."""
        if seed not in self._initial_states:
            torch.manual_seed(seed)
            self._initial_states[seed] = copy.deepcopy(
                self.new_model().to(self.device).state_dict()
            )
        return self._initial_states[seed]

    def batches(self, seed, split=None):
        """Return the minibatch stream of ``seed``, the same for every optimizer."""
        from slstm.data import batch_iterator

        generator = torch.Generator().manual_seed(seed)
        return batch_iterator(
            self.splits.train if split is None else split,
            self.batch_size,
            generator=generator,
            device=self.device,
        )

    def optimizer(self, name, lr):
        """Return the ``OptimizerFactory`` of ``name`` at learning rate ``lr``."""
        if name in LEARNED:
            return learned_factory(name, self.learned[name], lr, self.device)
        from slstm.optim import OPTIMIZERS

        spec = OPTIMIZERS[name]
        method = self.curvature_method if spec.needs_curvature else None
        return OptimizerFactory(
            name=name,
            make=lambda model, rate: spec.make(model.parameters(), rate),
            lr=lr,
            curvature_method=method,
        )

    def run(self, study, name, seed, lr, steps, eval_steps, multiplier=1.0, bar=None):
        on_step = None
        if bar is not None:

            def on_step(step, loss):
                if step % 10 == 0:
                    bar.set_postfix_str(
                        f"{DISPLAY_NAMES[name]} seed {seed} step {step} loss {loss:.3f}"
                    )

        return train_run(
            study=study,
            seed=seed,
            model=self.model,
            initial_state=self.initial_state(seed),
            optimizer=self.optimizer(name, lr),
            batches=self.batches(seed),
            steps=steps,
            eval_steps=eval_steps,
            eval_sets=self.eval_sets,
            device=self.device,
            lr_multiplier=multiplier,
            on_step=on_step,
        )


def choose_learning_rates(config, context, progress, log):
    """Return the learning-rate record of every optimizer, tuning where asked."""
    from tqdm.auto import tqdm

    chosen = {}
    to_tune = []
    for name in config.optimizers:
        if name in LEARNED:
            chosen[name] = {"lr": 1.0, "source": "checkpoint"}
        elif name in config.learning_rates:
            chosen[name] = {
                "lr": float(config.learning_rates[name]),
                "source": "option",
            }
        elif config.tune_trials == 0:
            from slstm.optim import OPTIMIZERS

            chosen[name] = {
                "lr": float(OPTIMIZERS[name].default_lr),
                "source": "default",
            }
        else:
            to_tune.append(name)
    if not to_tune:
        return chosen
    if context.splits.validation is None:
        raise ValueError(
            "tuning needs a validation split, but it is empty; set --validation-size "
            "or fix every baseline's rate with --lr NAME=VALUE"
        )

    seed = config.first_seed + TUNING_SEED_OFFSET
    bar = tqdm(
        total=len(to_tune) * config.tune_trials,
        desc="tuning",
        unit="trial",
        disable=not progress,
    )
    validation_sets = EvalSets(loss_split=context.splits.validation)
    for name in to_tune:

        def objective(lr, name=name):
            run = train_run(
                study="tuning",
                seed=seed,
                model=context.model,
                initial_state=context.initial_state(seed),
                optimizer=context.optimizer(name, lr),
                batches=context.batches(seed),
                steps=config.steps,
                eval_steps=[config.steps],
                eval_sets=validation_sets,
                device=context.device,
            )
            bar.update(1)
            bar.set_postfix_str(f"{DISPLAY_NAMES[name]} lr {lr:.3g}")
            return math.inf if run.diverged else run.train_loss[-1]

        low, high = config.lr_ranges.get(name, LR_SEARCH_RANGES[name])
        result = stratified_search(
            objective, low=low, high=high, n_trials=config.tune_trials, seed=seed
        )
        chosen[name] = {
            "lr": result.best_lr,
            "source": "tuned",
            "search_range": [low, high],
            "search": "stratified",
            "steps": config.steps,
            "best_score": result.best_score,
            "trials": [list(trial) for trial in result.trials],
            "all_diverged": result.all_diverged,
        }
        if result.all_diverged:
            log(
                f"tuned {DISPLAY_NAMES[name]}: all trials diverged; using lr "
                f"{result.best_lr:.4g}, the smallest of the range [{low:g}, {high:g}] "
                f"(set a lower range with --lr-range {name}=LOW:HIGH or fix it "
                f"with --lr {name}=VALUE)"
            )
        else:
            log(
                f"tuned {DISPLAY_NAMES[name]}: lr {result.best_lr:.4g} (validation "
                f"loss {result.best_score:.4f}, {len(result.trials)} "
                f"trial{'' if len(result.trials) == 1 else 's'})"
            )
    bar.close()
    return chosen


def run_comparison(config, seeds, learning_rates, context, progress):
    from tqdm.auto import tqdm

    eval_steps = evaluation_steps(config.steps, config.eval_every)
    runs = []
    bar = tqdm(
        total=len(seeds) * len(config.optimizers),
        desc="comparison",
        unit="run",
        disable=not progress,
    )
    # Seeds outside, so an interrupted experiment has every optimizer on the
    # seeds it finished.
    for seed in seeds:
        for name in config.optimizers:
            runs.append(
                context.run(
                    "main",
                    name,
                    seed,
                    learning_rates[name]["lr"],
                    config.steps,
                    eval_steps,
                    bar=bar,
                )
            )
            bar.update(1)
    bar.close()
    return runs


def run_lr_sensitivity(config, seeds, learning_rates, context, progress):
    from tqdm.auto import tqdm

    # ×1 is the main comparison on the same seeds, so it is not run again. The
    # study reports only the final loss, so it evaluates only at the ends.
    multipliers = sorted(m for m in set(config.lr_multipliers) if m != 1.0)
    eval_steps = [0, config.steps]
    runs = []
    bar = tqdm(
        total=len(seeds) * len(config.optimizers) * len(multipliers),
        desc="learning-rate sensitivity",
        unit="run",
        disable=not progress,
    )
    for seed in seeds:
        for name in config.optimizers:
            for multiplier in multipliers:
                lr = learning_rates[name]["lr"] * multiplier
                runs.append(
                    context.run(
                        "lr-sensitivity",
                        name,
                        seed,
                        lr,
                        config.steps,
                        eval_steps,
                        multiplier,
                        bar,
                    )
                )
                bar.update(1)
    bar.close()
    return runs


def horizon_eval_steps(steps, eval_every, meta_horizon):
    """Return about 20 evaluation steps of a horizon run, one at ``meta_horizon``."""
    return evaluation_steps(steps, max(eval_every, steps // 20), extra=[meta_horizon])


def run_horizon(config, horizon, names, learning_rates, context, progress):
    from tqdm.auto import tqdm

    steps = horizon["steps"]
    eval_steps = horizon_eval_steps(steps, config.eval_every, horizon["meta_horizon"])
    runs = []
    bar = tqdm(
        total=len(horizon["seeds"]) * len(names),
        desc="horizon",
        unit="run",
        disable=not progress,
    )
    for seed in horizon["seeds"]:
        for name in names:
            runs.append(
                context.run(
                    "horizon",
                    name,
                    seed,
                    learning_rates[name]["lr"],
                    steps,
                    eval_steps,
                    bar=bar,
                )
            )
            bar.update(1)
    bar.close()
    return runs
