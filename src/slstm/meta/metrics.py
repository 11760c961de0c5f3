"""The CSV logs of a meta-training run.

``metrics.csv`` has one row per episode and per validation. ``validation.csv`` has
one row per validation and validation horizon, so a run validated after 100 and
1,000 steps keeps both scores, not only their mean.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from slstm.meta.io import atomic_write_text

logger = logging.getLogger("slstm.meta")

FIELDS = (
    "kind",  # "episode" or "validation"
    "episode",  # episodes finished on each rank when the row was written
    "meta_steps",  # meta-updates applied so far
    "inner_steps",  # optimizee steps so far, summed over ranks
    "meta_loss",  # mean per-truncation meta-loss of the episode (rank mean)
    "final_loss",  # optimizee loss after the episode's last step (rank mean)
    "diverged",  # diverged episodes so far, summed over ranks
    "nonfinite",  # non-finite meta-losses or meta-gradients so far, over ranks
    "skipped",  # meta-updates skipped because no rank had a finite one, so far
    "validation_loss",  # mean final loss of fresh networks on held-out data
    "validation_error",  # their mean classification error on held-out data
    "meta_lr",
    "seconds",  # wall time since the run started, summed over resumptions
    "steps_per_second",  # optimizee steps per second of this process
)


VALIDATION_FIELDS = (
    "episode",  # episodes finished when the validation ran
    "meta_steps",  # meta-updates applied so far
    "steps",  # optimizee steps after which the networks were scored
    "loss",  # mean loss of the fresh networks on held-out data after `steps`
    "error",  # their mean classification error there
)


class MetricsLog:
    """Appends rows with the columns ``fields`` (``FIELDS`` by default) to a CSV
    file; a plot reads it with any CSV reader."""

    def __init__(self, path: str | Path, fields: tuple[str, ...] = FIELDS):
        self.path = Path(path)
        self.fields = fields

    def append(self, row: dict) -> None:
        new_file = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            # One line ending throughout, the same as truncate_after writes.
            writer = csv.DictWriter(
                handle,
                fieldnames=self.fields,
                extrasaction="raise",
                lineterminator="\n",
            )
            if new_file:
                writer.writeheader()
            writer.writerow({name: _format(row.get(name)) for name in self.fields})

    def truncate_after(self, episode: int) -> None:
        """Drop rows written after ``episode`` finished (they will be redone).

        A row that does not parse (a write cut short by a kill or a full disk)
        is dropped too, with a warning naming its line.
        """
        if not self.path.exists():
            return
        kept_rows = []
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                row_episode = _row_episode(row)
                if row_episode is None:
                    logger.warning(
                        "%s: dropping unreadable line %d", self.path, reader.line_num
                    )
                elif row_episode <= episode:
                    kept_rows.append(row)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.fields)
        for row in kept_rows:
            # A column the file lacks (written by an older version) stays empty.
            writer.writerow([row.get(name, "") for name in self.fields])
        atomic_write_text(text.getvalue(), self.path)


def read_metrics(path: str | Path) -> list[dict]:
    """Return the rows of a metrics CSV as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _row_episode(row: dict) -> int | None:
    """Return the row's episode, or None if the row has more or fewer cells
    than the header or its episode is not an integer."""
    # csv.DictReader keys extra cells by None and fills missing ones with None.
    if None in row or None in row.values():
        return None
    try:
        return int(row.get("episode", ""))
    except ValueError:
        return None


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)
