"""PNG plots of an experiment, drawn with matplotlib's Agg backend (no display).

Every curve is the mean over seeds with a band of ± one sample standard
deviation. A mean curve ends at the first step where any seed diverged, and each
divergence is marked with an ``x`` at the top of the axes at its step.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from .presets import DISPLAY_NAMES, OPTIMIZER_NAMES, preset_data  # noqa: E402
from .stats import aligned_curves, aligned_minibatch_losses  # noqa: E402
from .summary import sensitivity_runs  # noqa: E402

COLORS = {
    "sgd": "tab:gray",
    "rmsprop": "tab:green",
    "adam": "tab:blue",
    "diagonal-newton": "tab:purple",
    "lstm": "tab:orange",
    "slstm": "tab:red",
    "slstm-hutchinson": "tab:brown",
}
DPI = 120


def plot_results(record, out_dir):
    """Draw every plot of ``record`` into ``out_dir``; return the PNG paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_loss(record, out_dir / "loss.png"),
        plot_test_error(record, out_dir / "test_error.png"),
    ]
    if sensitivity_runs(record):
        paths.append(plot_lr_sensitivity(record, out_dir / "lr_sensitivity.png"))
    if record.runs_of("horizon"):
        paths.append(plot_horizon(record, out_dir / "horizon.png"))
    return paths


def plot_loss(record, path):
    """Plot minibatch loss per step and training-subset loss against steps."""
    fig, (ax_batch, ax_eval) = plt.subplots(1, 2, figsize=(12.5, 4.2), sharey=True)
    for name in _ordered(record.optimizers("main")):
        runs = record.runs_of("main", name)
        steps, values = aligned_minibatch_losses(runs)
        _band(ax_batch, steps, values, name)
        steps, values = aligned_curves(runs, "train_loss")
        _band(ax_eval, steps, values, name, marker=".")
        for ax in (ax_batch, ax_eval):
            _mark_divergence(ax, runs, name)
    ax_batch.set_title("minibatch loss (before each update)")
    ax_eval.set_title(f"loss on {record.setup['data']['train_eval']} training images")
    for ax in (ax_batch, ax_eval):
        ax.set_xlabel("step")
        _log_scale_if_positive(ax)
        ax.grid(True, which="both", alpha=0.3)
    ax_batch.set_ylabel("cross-entropy loss")
    _legend_outside(ax_eval)
    fig.suptitle(_title(record))
    return _save(fig, path)


def plot_test_error(record, path):
    """Plot the test error (percent) against steps."""
    return _save(draw_test_error(record), path)


def draw_test_error(record):
    """Return the figure of ``plot_test_error``, not yet saved."""
    fig, ax = plt.subplots(figsize=(7.8, 4.2))
    for name in _ordered(record.optimizers("main")):
        runs = record.runs_of("main", name)
        steps, values = aligned_curves(runs, "test_error")
        _band(ax, steps, 100 * values, name, marker=".")
        _mark_divergence(ax, runs, name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"test error on {record.setup['data']['test_eval']} images (%)")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    ax.set_title(_title(record), fontsize="medium")
    return fig


def plot_lr_sensitivity(record, path):
    """Plot the final training loss against the learning-rate multiplier."""
    return _save(draw_lr_sensitivity(record), path)


def draw_lr_sensitivity(record):
    """Return the figure of :func:`plot_lr_sensitivity`, not yet saved."""
    runs = sensitivity_runs(record)
    final_step = record.config["steps"]
    fig, ax = plt.subplots(figsize=(7.8, 4.2))
    marks = {}  # multiplier -> divergence marks drawn there so far
    for name in _ordered({run.optimizer for run in runs}):
        group = [run for run in runs if run.optimizer == name]
        multipliers = sorted({run.lr_multiplier for run in group})
        means, stds, kept, diverged = [], [], [], []
        for multiplier in multipliers:
            at = [run for run in group if run.lr_multiplier == multiplier]
            if any(run.diverged for run in at):
                diverged.append(multiplier)
            losses = [run.train_loss_at(final_step) for run in at if not run.diverged]
            if losses:
                kept.append(multiplier)
                means.append(np.mean(losses))
                stds.append(np.std(losses, ddof=1) if len(losses) > 1 else 0.0)
        color = COLORS.get(name)
        # The loss axis may be logarithmic, so a bar must not reach below 0.
        below = [min(std, 0.99 * mean) for mean, std in zip(means, stds, strict=True)]
        ax.errorbar(
            kept,
            means,
            yerr=[below, stds],
            marker="o",
            capsize=3,
            color=color,
            label=_label(name),
        )
        if diverged:
            # Stack the marks of optimizers that diverged at the same
            # multiplier, so that none hides another.
            heights = [0.97 - 0.05 * marks.get(m, 0) for m in diverged]
            for m in diverged:
                marks[m] = marks.get(m, 0) + 1
            ax.plot(
                diverged,
                heights,
                "x",
                color=color,
                markersize=9,
                transform=ax.get_xaxis_transform(),
            )
    ax.set_xscale("log")
    _log_scale_if_positive(ax)
    ax.set_xlabel("learning-rate multiplier (learned optimizers: output multiplier)")
    ax.set_ylabel(f"train loss at step {final_step}")
    ax.grid(True, which="both", alpha=0.3)
    _legend_outside(ax)
    ax.set_title("learning-rate sensitivity (x: a seed diverged)", fontsize="medium")
    return fig


def plot_horizon(record, path):
    """Plot the training-subset loss of the long runs and the meta-training horizon."""
    horizon = record.setup["horizon"]
    fig, ax = plt.subplots(figsize=(7.8, 4.2))
    for name in _ordered(record.optimizers("horizon")):
        runs = record.runs_of("horizon", name)
        steps, values = aligned_curves(runs, "train_loss")
        _band(ax, steps, values, name)
        _mark_divergence(ax, runs, name)
    _log_scale_if_positive(ax)
    ax.axvline(horizon["meta_horizon"], color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("step (dotted: meta-training horizon)")
    ax.set_ylabel(f"loss on {record.setup['data']['train_eval']} training images")
    ax.grid(True, which="both", alpha=0.3)
    _legend_outside(ax)
    ax.set_title(
        f"{horizon['steps']} steps, {horizon['factor']}× the meta-training horizon",
        fontsize="medium",
    )
    return _save(fig, path)


def _band(ax, steps, values, name, marker=None):
    if len(steps) == 0:
        return
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    color = COLORS.get(name)
    ax.plot(steps, mean, color=color, label=_label(name), marker=marker, markersize=3)
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _mark_divergence(ax, runs, name):
    steps = [run.diverged_at for run in runs if run.diverged]
    if steps:
        # Each optimizer marks at its own height, so that marks at one step
        # do not hide each other.
        row = OPTIMIZER_NAMES.index(name) if name in OPTIMIZER_NAMES else 0
        ax.plot(
            steps,
            [0.97 - 0.04 * row] * len(steps),
            "x",
            color=COLORS.get(name),
            markersize=9,
            transform=ax.get_xaxis_transform(),
        )


def _log_scale_if_positive(ax):
    # A log axis spreads the late, small losses where optimizers differ most;
    # it needs every plotted value to be positive.
    lows = [line.get_ydata() for line in ax.get_lines() if len(line.get_ydata())]
    lows = [np.min(y) for y in lows if np.issubdtype(np.asarray(y).dtype, np.number)]
    if lows and min(lows) > 0:
        ax.set_yscale("log")
        # Plain numbers (0.5, 1, 2) read better than powers of ten here, and
        # labelling only the minor ticks at 2 and 5 keeps them apart.
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain_label))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_label))


def _plain_label(value, _position):
    return f"{value:g}"


def _minor_label(value, _position):
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def _legend_outside(ax):
    # Inside the axes, even loc="best" covers the ends of some curves, where the
    # optimizers differ most. To the right of the axes it covers no data.
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small"
    )


def _label(name):
    return DISPLAY_NAMES.get(name, name)


def _title(record):
    setup = record.setup
    preset = record.config["preset"]
    data = setup.get("data", {}).get("name")
    # A preset run on another data set than its own (--data) names both.
    where = preset if data in (None, preset_data(preset)) else f"{preset} on {data}"
    return f"{where} ({setup['scale']} scale): {setup['model']['name']}, " + (
        "1 seed, no spread"
        if len(setup["seeds"]) == 1
        else f"mean ± std over {len(setup['seeds'])} seeds"
    )


def _ordered(names):
    names = list(names)
    return [n for n in OPTIMIZER_NAMES if n in names] + sorted(
        n for n in names if n not in OPTIMIZER_NAMES
    )


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
