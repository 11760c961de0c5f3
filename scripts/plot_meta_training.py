"""Plot meta-training curves from the logs of one or more runs.

Usage: python scripts/plot_meta_training.py OUT.png LABEL=RUN [LABEL=RUN ...]

RUN is a folder written by `slstm meta-train` or a copy of its metrics.csv.
Left: the final training loss of each episode's optimizee (thin) and its moving
mean over 10 episodes. Right: the validation loss of fresh networks trained by the
frozen update networks, the quantity that chooses best.pt. When the run was
validated after several step counts (--validation-horizon 100,1000), each count's
loss from its validation.csv is drawn as well (dashed, dotted, ...) beside their
mean. Beside a copy named NAME-metrics.csv, that file is NAME-validation.csv.
"""

import csv
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS_COLUMNS = ("kind", "episode", "final_loss", "validation_loss")
VALIDATION_COLUMNS = ("episode", "steps", "loss")


class PlotError(Exception):
    """Bad input, reported as one line without a traceback."""


def metrics_file(run: Path) -> Path:
    """Return the metrics CSV of ``run``, a run folder or a metrics CSV file."""
    path = run / "metrics.csv" if run.is_dir() else run
    if not path.is_file():
        raise PlotError(
            f"{run}: no such run; pass a folder written by slstm meta-train "
            "(it holds metrics.csv) or a copy of its metrics.csv"
        )
    return path


def validation_file(run: Path) -> Path | None:
    """Return the validation CSV that belongs to ``run``, or None."""
    if run.is_dir():
        path = run / "validation.csv"
    elif run.name.endswith("metrics.csv"):
        path = run.with_name(run.name[: -len("metrics.csv")] + "validation.csv")
    else:
        return None
    return path if path.is_file() else None


def _rows(path: Path, columns: tuple[str, ...]):
    """Yield ``(line number, row)`` for each row, after checking the header."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in columns if name not in (reader.fieldnames or ())]
        if missing:
            raise PlotError(
                f"{path}: missing columns {missing}; expected a file written by "
                f"slstm meta-train with the columns {list(columns)}"
            )
        for row in reader:
            yield reader.line_num, row


def _number(path: Path, line: int, row: dict, name: str, kind=float):
    try:
        return kind(row[name])
    except (TypeError, ValueError):
        raise PlotError(
            f"{path}, line {line}: {name} is {row[name]!r}, not a number; "
            "fix or delete that line"
        ) from None


def read_metrics(run: Path):
    """Return ``(episodes, final losses, [(episode, validation loss), ...])``."""
    path = metrics_file(run)
    episodes, final_losses, validation = [], [], []
    for line, row in _rows(path, METRICS_COLUMNS):
        if row["kind"] == "episode" and row["final_loss"]:
            episodes.append(_number(path, line, row, "episode", int))
            final_losses.append(_number(path, line, row, "final_loss"))
        elif row["kind"] == "validation":
            validation.append(
                (
                    _number(path, line, row, "episode", int),
                    _number(path, line, row, "validation_loss"),
                )
            )
    if not episodes:
        raise PlotError(f"{path} has no episode rows yet; nothing to plot")
    return episodes, final_losses, validation


def read_validation_by_steps(run: Path) -> dict[int, list[tuple[int, float]]]:
    """Return ``{steps: [(episode, loss), ...]}`` from the run's validation CSV,
    or {} when there is none or it holds only one step count."""
    path = validation_file(run)
    if path is None:
        return {}
    by_steps: dict[int, list[tuple[int, float]]] = {}
    for line, row in _rows(path, VALIDATION_COLUMNS):
        steps = _number(path, line, row, "steps", int)
        by_steps.setdefault(steps, []).append(
            (
                _number(path, line, row, "episode", int),
                _number(path, line, row, "loss"),
            )
        )
    return by_steps if len(by_steps) > 1 else {}


def moving_mean(values, window=10):
    means = []
    for index in range(len(values)):
        chunk = values[max(0, index - window + 1) : index + 1]
        means.append(sum(chunk) / len(chunk))
    return means


def check_output(out: Path, figure) -> None:
    """Fail before plotting when ``out`` cannot be written."""
    formats = figure.canvas.get_supported_filetypes()
    suffix = out.suffix.lstrip(".").lower()
    if suffix not in formats:
        raise PlotError(
            f"{out}: unknown image format {suffix!r}; end the name with one of "
            + ", ".join(f".{name}" for name in sorted(formats))
        )
    if not out.parent.is_dir():
        raise PlotError(f"{out}: folder {out.parent} does not exist; create it first")


def plot(out: Path, runs: list[tuple[str, Path]]) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    check_output(out, figure)
    styles = ("--", ":", "-.")
    for label, run in runs:
        episodes, final_losses, validation = read_metrics(run)
        line = left.plot(episodes, final_losses, alpha=0.25, linewidth=0.8)[0]
        left.plot(
            episodes, moving_mean(final_losses), color=line.get_color(), label=label
        )
        finite = [(x, y) for x, y in validation if math.isfinite(y)]
        if finite:
            x, y = zip(*finite, strict=True)
            right.plot(x, y, marker="o", color=line.get_color(), label=label)
        by_steps = read_validation_by_steps(run)
        for index, (steps, points) in enumerate(sorted(by_steps.items())):
            x, y = zip(*points, strict=True)
            right.plot(
                x,
                y,
                linestyle=styles[index % len(styles)],
                linewidth=0.9,
                color=line.get_color(),
                label=f"{label} @{steps} steps",
            )
    left.set(xlabel="episode", ylabel="optimizee loss at the last step", yscale="log")
    right.set(xlabel="episode", ylabel="validation loss (fresh networks)")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv) -> int:
    if len(argv) < 2 or any("=" not in arg for arg in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    runs = [(label, Path(run)) for label, run in (a.split("=", 1) for a in argv[1:])]
    try:
        plot(Path(argv[0]), runs)
    except PlotError as error:
        print(f"plot_meta_training.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
