"""Comparisons of optimizers on preset experiments: runner, records, plots, summary.

``run_experiment(ExperimentConfig(...))`` trains a preset network with SGD,
RMSprop, Adam, DiagonalNewton and the learned LSTM, SLSTM and SLSTM-Hutchinson
optimizers on the same initialisations and minibatches, and writes ``config.json``,
``results.json``, ``curves.csv``, PNG plots and ``summary.md``. ``slstm
experiment`` and ``slstm plot`` are its command-line front ends.
"""

from .plots import plot_results
from .presets import OPTIMIZER_NAMES, PRESETS, Preset, ScaleSettings, resolve_scale
from .records import (
    ExperimentRecord,
    RunRecord,
    compare_with_csv,
    load_results,
    write_results,
)
from .runner import ExperimentConfig, ExperimentResult, run_experiment
from .summary import format_main_table, render_summary, summarize

__all__ = [
    "OPTIMIZER_NAMES",
    "PRESETS",
    "ExperimentConfig",
    "ExperimentRecord",
    "ExperimentResult",
    "Preset",
    "RunRecord",
    "ScaleSettings",
    "compare_with_csv",
    "format_main_table",
    "load_results",
    "plot_results",
    "render_summary",
    "resolve_scale",
    "run_experiment",
    "summarize",
    "write_results",
]
