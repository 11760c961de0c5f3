"""Plot meta-training curves from the metrics.csv of one or more runs.

Usage: python scripts/plot_meta_training.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Left: the final training loss of each episode's optimizee (thin) and its moving
mean over 10 episodes. Right: the validation loss of fresh networks trained by the
frozen update networks, the quantity that chooses best.pt. A run validated after
several step counts (--validation-horizon 100,1000) has a validation.csv; then each
count's loss is drawn as well (dashed, dotted, ...) beside their mean.
"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: Path):
    episodes, final_losses, validation = [], [], []
    with open(run_dir / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["kind"] == "episode" and row["final_loss"]:
                episodes.append(int(row["episode"]))
                final_losses.append(float(row["final_loss"]))
            elif row["kind"] == "validation":
                validation.append((int(row["episode"]), float(row["validation_loss"])))
    return episodes, final_losses, validation


def read_validation_by_steps(run_dir: Path) -> dict[int, list[tuple[int, float]]]:
    """Return ``{steps: [(episode, loss), ...]}`` from validation.csv, or {}."""
    path = run_dir / "validation.csv"
    if not path.exists():
        return {}
    by_steps: dict[int, list[tuple[int, float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            by_steps.setdefault(int(row["steps"]), []).append(
                (int(row["episode"]), float(row["loss"]))
            )
    return by_steps if len(by_steps) > 1 else {}


def moving_mean(values, window=10):
    means = []
    for index in range(len(values)):
        chunk = values[max(0, index - window + 1) : index + 1]
        means.append(sum(chunk) / len(chunk))
    return means


def main(argv):
    if len(argv) < 2 or any("=" not in arg for arg in argv[1:]):
        raise SystemExit(__doc__)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for arg in argv[1:]:
        label, run_dir = arg.split("=", 1)
        episodes, final_losses, validation = read_metrics(Path(run_dir))
        line = left.plot(episodes, final_losses, alpha=0.25, linewidth=0.8)[0]
        left.plot(
            episodes, moving_mean(final_losses), color=line.get_color(), label=label
        )
        if validation:
            x, y = zip(*validation, strict=True)
            right.plot(x, y, marker="o", color=line.get_color(), label=label)
        styles = ("--", ":", "-.")
        by_steps = read_validation_by_steps(Path(run_dir))
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
        axes.legend()
    figure.tight_layout()
    figure.savefig(argv[0], dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
