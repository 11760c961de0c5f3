"""The summary table of an experiment, in Markdown for summary.md and the terminal."""

import math
from dataclasses import dataclass

from .presets import DISPLAY_NAMES, OPTIMIZER_NAMES, preset_data
from .stats import mean_std, steps_to_reach

REFERENCE_OPTIMIZER = "adam"


@dataclass
class SummaryRow:
    """One optimizer's row of the main table, all statistics over seeds.

    Attributes:
        optimizer: registry name.
        seeds: number of runs.
        train_loss: ``(mean, std, n)`` of the final training-subset loss over the
            ``n`` runs that did not diverge.
        test_error: ``(mean, std, n)`` of the final test error (a fraction).
        diverged_at: divergence step of each diverged run.
        steps_to_reference: first evaluation step where the seed-mean training
            loss is at most the reference optimizer's final mean, or None.
        lr: the learning rate used (the output multiplier for learned optimizers).
        lr_source: how ``lr`` was chosen: "tuned", "default", "option" or
            "checkpoint".
        lr_all_diverged: True when every tuning trial diverged and ``lr`` is
            the fallback, the smallest rate of the search range.
        seconds_per_run: mean wall time of a run including evaluation.
        ms_per_step: mean wall time of one update step in milliseconds.
    """

    optimizer: str
    seeds: int
    train_loss: tuple
    test_error: tuple
    diverged_at: list
    steps_to_reference: int | None
    lr: float
    lr_source: str
    seconds_per_run: float
    ms_per_step: float
    lr_all_diverged: bool = False


def summarize(record, study="main"):
    """Return one ``SummaryRow`` per optimizer of ``study``, in table order."""
    final_step = record.config["steps"]
    reference_runs = record.runs_of(study, REFERENCE_OPTIMIZER)
    target = reference_loss(reference_runs, final_step)
    rows = []
    for name in _ordered(record.optimizers(study)):
        runs = record.runs_of(study, name)
        finished = [run for run in runs if not run.diverged]
        step_times = [t for run in runs for t in run.step_time_s if math.isfinite(t)]
        lr_info = record.learning_rates.get(name, {})
        rows.append(
            SummaryRow(
                optimizer=name,
                seeds=len(runs),
                train_loss=mean_std(
                    [run.train_loss_at(final_step) for run in finished]
                ),
                test_error=mean_std(
                    [run.test_error_at(final_step) for run in finished]
                ),
                diverged_at=[run.diverged_at for run in runs if run.diverged],
                steps_to_reference=steps_to_reach(runs, target),
                lr=runs[0].lr / runs[0].lr_multiplier if runs else math.nan,
                lr_source=lr_info.get("source", "default"),
                seconds_per_run=mean_std([run.wall_time_s for run in runs])[0],
                ms_per_step=1000 * mean_std(step_times)[0],
                lr_all_diverged=bool(lr_info.get("all_diverged", False)),
            )
        )
    return rows


def summary_table(record, study="main"):
    """Return the main table as a list of dicts, one per optimizer.

    Keys: ``optimizer``, ``seeds``, ``train_loss_mean``, ``train_loss_std``,
    ``test_error_mean``, ``test_error_std`` (fractions), ``finished_seeds``,
    ``diverged_at``, ``steps_to_reference``, ``reference`` (the optimizer whose
    final loss is the target), ``lr``, ``lr_source``, ``seconds_per_run`` and
    ``ms_per_step``.
    """
    table = []
    for row in summarize(record, study):
        table.append(
            {
                "optimizer": row.optimizer,
                "seeds": row.seeds,
                "finished_seeds": row.train_loss[2],
                "train_loss_mean": row.train_loss[0],
                "train_loss_std": row.train_loss[1],
                "test_error_mean": row.test_error[0],
                "test_error_std": row.test_error[1],
                "diverged_at": row.diverged_at,
                "steps_to_reference": row.steps_to_reference,
                "reference": REFERENCE_OPTIMIZER,
                "lr": row.lr,
                "lr_source": row.lr_source,
                "seconds_per_run": row.seconds_per_run,
                "ms_per_step": row.ms_per_step,
            }
        )
    return table


def reference_loss(runs, final_step):
    """Return the seed-mean final training loss of ``runs``, nan if any diverged."""
    if not runs or any(run.diverged for run in runs):
        return math.nan
    return mean_std([run.train_loss_at(final_step) for run in runs])[0]


def format_main_table(record, rows=None):
    """Return the main table in Markdown, one row per optimizer."""
    rows = summarize(record) if rows is None else rows
    final_step = record.config["steps"]
    reference = DISPLAY_NAMES[REFERENCE_OPTIMIZER]
    header = (
        f"| optimizer | train loss @{final_step} | test error @{final_step} "
        f"| steps to {reference}'s loss "
        "| learning rate | diverged | time per run | time per step |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [
            DISPLAY_NAMES.get(row.optimizer, row.optimizer),
            _format_mean_std(row.train_loss, row.seeds, 4),
            _format_mean_std(_percent(row.test_error), row.seeds, 2, " %"),
            _format_reach(row, final_step),
            _format_lr(row),
            _format_divergence(row),
            f"{row.seconds_per_run:.1f} s",
            f"{row.ms_per_step:.1f} ms",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_sensitivity_table(record):
    """Return the learning-rate sensitivity table, or None if the study did not run.

    Each cell is the final training loss, mean ± std over the study's seeds; the
    column ×1 reuses the main runs of the same seeds.
    """
    runs = sensitivity_runs(record)
    if not runs:
        return None
    final_step = record.config["steps"]
    multipliers = sorted({run.lr_multiplier for run in runs})
    header = "| optimizer | " + " | ".join(f"×{m:g}" for m in multipliers) + " |"
    lines = [header, "|---|" + "---|" * len(multipliers)]
    for name in _ordered({run.optimizer for run in runs}):
        cells = []
        for multiplier in multipliers:
            group = [
                r for r in runs if r.optimizer == name and r.lr_multiplier == multiplier
            ]
            cells.append(_format_group(group, final_step))
        lines.append(f"| {DISPLAY_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sensitivity_runs(record):
    """Return the sensitivity study's runs plus the main runs of its seeds (×1)."""
    study = record.runs_of("lr-sensitivity")
    if not study:
        return []
    seeds = {run.seed for run in study}
    names = {run.optimizer for run in study}
    main = [
        run
        for run in record.runs_of("main")
        if run.seed in seeds and run.optimizer in names and run.lr_multiplier == 1.0
    ]
    return study + main


def format_horizon_table(record):
    """Return the horizon study table, or None if the study did not run."""
    runs = record.runs_of("horizon")
    if not runs:
        return None
    horizon = record.setup["horizon"]
    meta_horizon = horizon["meta_horizon"]
    steps = horizon["steps"]
    lines = [
        f"| optimizer | runs | diverged | stalled | loss @{meta_horizon} "
        f"| loss @{steps} | test error @{steps} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in _ordered({run.optimizer for run in runs}):
        group = [run for run in runs if run.optimizer == name]
        outcome = horizon_outcomes(group, meta_horizon, steps)
        finished = [run for run in group if not run.diverged]
        lines.append(
            "| {name} | {n} | {div} | {stall} | {at_h} | {final} | {err} |".format(
                name=DISPLAY_NAMES.get(name, name),
                n=len(group),
                div=f"{outcome['diverged']}/{len(group)}",
                stall=f"{outcome['stalled']}/{len(group)}",
                at_h=_format_mean_std(
                    mean_std([run.train_loss_at(meta_horizon) for run in group]),
                    len(group),
                    4,
                ),
                final=_format_mean_std(
                    mean_std([run.train_loss_at(steps) for run in finished]),
                    len(group),
                    4,
                ),
                err=_format_mean_std(
                    _percent(mean_std([run.test_error_at(steps) for run in finished])),
                    len(group),
                    2,
                    " %",
                ),
            )
        )
    return "\n".join(lines)


# A run past the meta-training horizon "stalls" when its final training loss is
# not at least this fraction below its loss at the horizon.
STALL_IMPROVEMENT = 0.01


def horizon_outcomes(runs, meta_horizon, steps):
    """Count diverged and stalled runs of the horizon study.

    A run diverged if its loss became non-finite. It stalled if it finished but
    its training loss at ``steps`` is not at least ``STALL_IMPROVEMENT`` (1 %)
    below its loss at the meta-training horizon ``meta_horizon``.
    """
    diverged = sum(run.diverged for run in runs)
    stalled = 0
    for run in runs:
        if run.diverged:
            continue
        at_horizon = run.train_loss_at(meta_horizon)
        final = run.train_loss_at(steps)
        if not final <= (1 - STALL_IMPROVEMENT) * at_horizon:
            stalled += 1
    return {"diverged": diverged, "stalled": stalled}


def render_summary(record):
    """Return the text of summary.md."""
    config, setup = record.config, record.setup
    final_step = config["steps"]
    rows = summarize(record)
    data = record.setup.get("data", {}).get("name")
    heading = f"# Experiment `{config['preset']}`"
    if data not in (None, preset_data(config["preset"])):
        heading += f" on {data}"  # --data replaced the preset's data set
    lines = [heading, ""]
    lines += _setup_lines(record)
    lines += [
        "",
        f"## Results at step {final_step}",
        "",
        format_main_table(record, rows),
        "",
        _seed_sentence(setup["seeds"]) + "; within a seed every "
        "optimizer starts from the same initialisation and sees the same minibatches.",
        f"Train loss: mean cross-entropy on a fixed subset of "
        f"{setup['data']['train_eval']} training images. Test error: on "
        f"{setup['data']['test_eval']} test images.",
        f"Steps to {DISPLAY_NAMES[REFERENCE_OPTIMIZER]}'s loss: first evaluated step "
        f"({_evaluation_steps(config)}) where the seed-mean train loss is at "
        f"most tuned {DISPLAY_NAMES[REFERENCE_OPTIMIZER]}'s mean at step {final_step}; "
        "'not reached' within the run otherwise. Diverged runs (non-finite loss) "
        "are left out of the means and listed with their step.",
    ]
    lines += ["", "## Learning rates", ""] + _learning_rate_lines(record)
    lines += ["", "## Learned optimizers", ""] + _checkpoint_lines(record)
    sensitivity = format_sensitivity_table(record)
    if sensitivity is not None:
        study = setup["lr_sensitivity"]
        lines += [
            "",
            "## Learning-rate sensitivity",
            "",
            f"Train loss at step {final_step} when each optimizer's learning rate is "
            "multiplied by the column's factor (for the learned optimizers the "
            f"factor multiplies the update they output); seeds {study['seeds']}.",
            "",
            sensitivity,
        ]
    horizon = format_horizon_table(record)
    if horizon is not None:
        study = setup["horizon"]
        lines += [
            "",
            "## Horizon",
            "",
            f"Runs of {study['steps']} steps, {study['factor']}× the meta-training "
            f"horizon of {study['meta_horizon']} steps "
            f"({study['meta_horizon_source']}); "
            f"seeds {study['seeds']}. Stalled: finished with a train loss not at "
            f"least {STALL_IMPROVEMENT:.0%} below its loss at step "
            f"{study['meta_horizon']}.",
            "",
            horizon,
        ]
    lines += ["", "## Time", ""] + _timing_lines(record)
    return "\n".join(lines) + "\n"


def _setup_lines(record):
    config, setup = record.config, record.setup
    data, model = setup["data"], setup["model"]
    sizes = ", ".join(f"{k}={v}" for k, v in model.get("sizes", {}).items())
    return [
        f"- scale: **{setup['scale']}** ({setup['scale_reason']})",
        f"- device: {setup['device']}",
        f"- data: {data['name']} from {data['dir']}: {data['train']} training "
        f"(of which {data['validation']} held out for tuning), {data['test']} test "
        f"images, {data['num_classes']} classes",
        f"- network: {model['name']}({sizes}), {model['parameters']} parameters",
        f"- {config['steps']} steps, minibatch {setup['batch_size']}, evaluation "
        f"{_evaluation_steps(config)}",
        f"- command: `{setup.get('command', '')}`",
    ]


def _learning_rate_lines(record):
    lines = []
    for name in _ordered(record.learning_rates):
        info = record.learning_rates[name]
        display = DISPLAY_NAMES.get(name, name)
        source = info["source"]
        if source == "tuned" and info.get("all_diverged"):
            low, high = info["search_range"]
            lines.append(
                f"- {display}: {info['lr']:.4g}, all trials diverged: all "
                f"{len(info['trials'])} trials in [{low:g}, {high:g}] gave a "
                f"non-finite validation loss after {info['steps']} steps, so the "
                "smallest rate of the range was used, untuned"
            )
        elif source == "tuned":
            low, high = info["search_range"]
            lines.append(
                f"- {display}: {info['lr']:.4g}, best of {_trials(info['trials'])} "
                f"in [{low:g}, {high:g}], one log-uniform draw in each of "
                f"{len(info['trials'])} equal parts of the range on a log scale, "
                f"scored by the validation loss after {info['steps']} steps "
                f"(best {info['best_score']:.4f})"
            )
        elif source == "checkpoint":
            lines.append(f"- {display}: the checkpoint's own update (multiplier ×1)")
        elif source == "option":
            lines.append(f"- {display}: {info['lr']:.4g}, set with --lr")
        else:
            lines.append(
                f"- {display}: {info['lr']:.4g}, the registry default (untuned)"
            )
    return lines or ["- no optimizer ran"]


def _checkpoint_lines(record):
    if not record.checkpoints:
        return ["- no learned optimizer ran"]
    lines = []
    for name in _ordered(record.checkpoints):
        info = record.checkpoints[name]
        lines.append(f"- {DISPLAY_NAMES.get(name, name)}: `{info['source']}`")
        if info.get("note"):
            lines.append(f"  - note: {info['note']}")
        if info.get("trained_on"):
            lines.append(f"  - meta-trained on: {_format_value(info['trained_on'])}")
        for key, value in sorted(info.get("provenance", {}).items()):
            lines.append(f"  - {key}: {_format_provenance(key, value)}")
    lines.append(
        "- every record in full: `checkpoints` in results.json (its `provenance`)"
    )
    return lines


def _format_provenance(key, value):
    """Return one short line for a provenance entry.

    Nested records are summed up here, and results.json keeps them whole.
    """
    if key == "validation_by_horizon" and isinstance(value, dict):
        return ", ".join(
            f"{steps} steps: loss {_format_value(score.get('loss'))}"
            for steps, score in value.items()
            if isinstance(score, dict)
        )
    if key == "output_scale_calibration" and isinstance(value, dict):
        trials = value.get("trials") or []
        scales = [t.get("output_scale") for t in trials if isinstance(t, dict)]
        return (
            f"output scale {_format_value(value.get('chosen_output_scale'))} chosen "
            f"from {_format_value(scales)} on {value.get('validation_tasks')} "
            f"validation networks"
        )
    if key == "weight_average" and isinstance(value, dict):
        sources = value.get("sources") or []
        episodes = [s.get("episode") for s in sources if isinstance(s, dict)]
        return f"mean of {len(sources)} checkpoints, episodes {_format_value(episodes)}"
    if isinstance(value, dict | list):
        return "recorded in results.json"
    return _format_value(value)


def _timing_lines(record):
    lines = [f"- {phase}: {seconds:.1f} s" for phase, seconds in record.timing.items()]
    return lines or ["- not recorded"]


def _format_value(value):
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _format_group(runs, final_step):
    if not runs:
        return "–"
    finished = [run for run in runs if not run.diverged]
    if not finished:
        return f"diverged {len(runs)}/{len(runs)}"
    mean, std, n = mean_std([run.train_loss_at(final_step) for run in finished])
    text = _mean_and_spread(mean, std, n, 4)
    if n < len(runs):
        text += f" ({len(runs) - n}/{len(runs)} diverged)"
    return text


def _format_mean_std(stats, seeds, digits, unit=""):
    mean, std, n = stats
    if n == 0:
        return "all diverged" if seeds else "–"
    text = _mean_and_spread(mean, std, n, digits, unit)
    if n < seeds:
        text += f" ({n} of {seeds} seeds)"
    return text


def _seed_sentence(seeds):
    note = _seed_note(seeds)
    if len(seeds) > 1:
        note += f" ({', '.join(str(s) for s in seeds)})"
    return note[0].upper() + note[1:]


def _mean_and_spread(mean, std, n, digits, unit=""):
    # One value has no sample standard deviation, so "± 0" would claim a spread.
    if n == 1:
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def _seed_note(seeds):
    """Return how a table cell or curve summarises ``seeds`` (a list of seeds)."""
    if len(seeds) == 1:
        return f"1 seed ({seeds[0]}), no spread"
    return f"mean ± sample standard deviation over {len(seeds)} seeds"


def _format_reach(row, final_step):
    if row.optimizer == REFERENCE_OPTIMIZER:
        if row.steps_to_reference is None:
            return "–"
        return f"{row.steps_to_reference} (reference)"
    if row.steps_to_reference is None:
        return f"not reached in {final_step}"
    return str(row.steps_to_reference)


def _format_lr(row):
    if row.lr_source == "checkpoint":
        return "checkpoint ×1"
    if row.lr_all_diverged:
        return f"{row.lr:.4g} (all trials diverged)"
    return f"{row.lr:.4g} ({row.lr_source})"


def _format_divergence(row):
    if not row.diverged_at:
        return f"0/{row.seeds}"
    steps = ", ".join(str(s) for s in row.diverged_at)
    return f"{len(row.diverged_at)}/{row.seeds} (steps {steps})"


def _percent(stats):
    mean, std, n = stats
    return 100 * mean, 100 * std, n


def _ordered(names):
    names = list(names)
    known = [name for name in OPTIMIZER_NAMES if name in names]
    return known + sorted(name for name in names if name not in OPTIMIZER_NAMES)


def _trials(trials) -> str:
    """Return "1 trial" or "N trials"."""
    return f"{len(trials)} trial{'' if len(trials) == 1 else 's'}"


def _evaluation_steps(config) -> str:
    """Describe when runs were evaluated: every ``eval_every`` steps and at the
    last step, which the training loop always scores."""
    every, last = config["eval_every"], config["steps"]
    if last % every == 0:
        return f"every {every} steps"
    return f"every {every} steps and at step {last}"
