"""Records of an experiment: ``results.json`` and ``curves.csv``.

Both files hold every curve of every run, and the values agree to the last bit:
floats are written with ``repr``, and non-finite values (a diverged loss) appear
as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` in both, because standard JSON
has no literal for them.

Step convention: step ``t`` of a run with ``T`` steps (``1 <= t <= T``) is the
``t``-th parameter update. Its minibatch loss and wall time belong to that
update, and the loss is measured before the update is applied. Evaluations at
step ``t`` see the parameters after ``t`` updates, and step 0 evaluates the
initialisation.
"""

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "slstm-experiment/1"
RESULTS_FILE = "results.json"
CURVES_FILE = "curves.csv"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.md"

CSV_COLUMNS = (
    "study",
    "optimizer",
    "seed",
    "lr_multiplier",
    "step",
    "minibatch_loss",
    "step_time_s",
    "train_loss",
    "test_error",
)


@dataclass
class RunRecord:
    """Curves of one training run: one optimizer, one seed, one study.

    Attributes:
        study: ``"main"``, ``"lr-sensitivity"`` or ``"horizon"``.
        optimizer: ``slstm.optim.OPTIMIZERS`` name.
        seed: seed of the initialisation and of the minibatch order.
        lr: learning rate passed to the optimizer; for learned optimizers the
            factor that multiplies their output.
        lr_multiplier: ``lr`` divided by the chosen (tuned or default) value.
        steps: update steps that ran, ``1..T`` or fewer after a divergence.
        minibatch_loss: loss of the minibatch of each step, before the update.
        step_time_s: wall time of each step in seconds (forward, backward and
            update, without evaluation).
        eval_steps: steps at which the model was evaluated, starting with 0.
        train_loss: mean loss on the fixed training subset at ``eval_steps``.
        test_error: fraction of misclassified test images at ``eval_steps``.
        diverged_at: first step with a non-finite loss, or None.
        wall_time_s: wall time of the whole run including evaluation, seconds.
    """

    study: str
    optimizer: str
    seed: int
    lr: float
    lr_multiplier: float = 1.0
    steps: list = field(default_factory=list)
    minibatch_loss: list = field(default_factory=list)
    step_time_s: list = field(default_factory=list)
    eval_steps: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    test_error: list = field(default_factory=list)
    diverged_at: int | None = None
    wall_time_s: float = 0.0

    @property
    def diverged(self):
        return self.diverged_at is not None

    @property
    def final_step(self):
        """Last step that was evaluated (the run length unless it diverged)."""
        return self.eval_steps[-1] if self.eval_steps else 0

    def train_loss_at(self, step):
        """Training-subset loss at evaluation ``step``, or nan if not evaluated."""
        try:
            return self.train_loss[self.eval_steps.index(step)]
        except ValueError:
            return math.nan

    def test_error_at(self, step):
        """Test error at evaluation ``step``, or nan if not evaluated."""
        try:
            return self.test_error[self.eval_steps.index(step)]
        except ValueError:
            return math.nan

    def to_json(self):
        return _encode(asdict(self))

    @classmethod
    def from_json(cls, data):
        data = dict(data)
        for key in ("minibatch_loss", "step_time_s", "train_loss", "test_error"):
            data[key] = [_decode_float(v) for v in data[key]]
        data["lr"] = _decode_float(data["lr"])
        data["lr_multiplier"] = _decode_float(data["lr_multiplier"])
        return cls(**data)


@dataclass
class ExperimentRecord:
    """Everything an experiment measured, as stored in ``results.json``.

    Attributes:
        config: the resolved configuration (``ExperimentConfig`` as a dict).
        setup: facts of the run that are not options: scale and why, device,
            data set sizes, network and its parameter count, evaluation steps.
        learning_rates: per optimizer ``{"lr", "source", ...}``; tuned baselines
            also carry ``"search_range"``, ``"trials"`` and ``"best_score"``.
        checkpoints: per learned optimizer ``{"source", "provenance", ...}``.
        runs: every run of every study.
        timing: wall time of each phase in seconds.
        summary: the summary table as data (``summary.summary_table``), derived
            from ``runs`` and stored for scripts that read results.json.
    """

    config: dict
    setup: dict
    learning_rates: dict
    checkpoints: dict
    runs: list
    timing: dict = field(default_factory=dict)
    summary: list = field(default_factory=list)

    def runs_of(self, study="main", optimizer=None):
        """Return the runs of ``study`` (and ``optimizer`` if given), seed order."""
        runs = [
            run
            for run in self.runs
            if run.study == study and (optimizer is None or run.optimizer == optimizer)
        ]
        return sorted(
            runs, key=lambda run: (run.optimizer, run.lr_multiplier, run.seed)
        )

    def optimizers(self, study="main"):
        """Return the optimizer names that ran in ``study``, in first-run order."""
        names = []
        for run in self.runs:
            if run.study == study and run.optimizer not in names:
                names.append(run.optimizer)
        return names

    def to_json(self):
        return {
            "format": FORMAT,
            "config": _encode(self.config),
            "setup": _encode(self.setup),
            "learning_rates": _encode(self.learning_rates),
            "checkpoints": _encode(self.checkpoints),
            "timing": _encode(self.timing),
            "summary": _encode(self.summary),
            "runs": [run.to_json() for run in self.runs],
        }

    @classmethod
    def from_json(cls, data):
        if data.get("format") != FORMAT:
            raise ValueError(
                f"results format {data.get('format')!r} is not {FORMAT!r}; "
                "rerun the experiment with this version of slstm"
            )
        return cls(
            config=data["config"],
            setup=data["setup"],
            learning_rates=data["learning_rates"],
            checkpoints=data["checkpoints"],
            timing=data.get("timing", {}),
            summary=data.get("summary", []),
            runs=[RunRecord.from_json(run) for run in data["runs"]],
        )


def write_results(record, out_dir):
    """Write ``results.json`` and ``curves.csv`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    curves_path = out_dir / CURVES_FILE
    _write_json(results_path, record.to_json())
    write_curves_csv(record.runs, curves_path)
    return results_path, curves_path


def write_config(config, out_dir):
    """Write ``config.json`` (a plain dict) into ``out_dir`` and return its path."""
    path = Path(out_dir) / CONFIG_FILE
    _write_json(path, _encode(config))
    return path


def load_results(out_dir):
    """Read ``results.json`` from an experiment directory (or that file's path)."""
    path = Path(out_dir)
    if not (path.name == RESULTS_FILE and path.is_file()):
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass the directory that `slstm experiment` wrote "
            "(it contains results.json and curves.csv)"
        )
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not the results.json of `slstm experiment` (expected a "
            "JSON object); pass the directory that the experiment wrote"
        )
    return ExperimentRecord.from_json(data)


def curve_rows(runs):
    """Yield one CSV row (a tuple of strings) per run and step, step 0 included."""
    for run in runs:
        evaluations = dict(
            zip(
                run.eval_steps,
                zip(run.train_loss, run.test_error, strict=True),
                strict=True,
            )
        )
        updates = dict(
            zip(
                run.steps,
                zip(run.minibatch_loss, run.step_time_s, strict=True),
                strict=True,
            )
        )
        for step in sorted(set(evaluations) | set(updates)):
            minibatch_loss, step_time = updates.get(step, (None, None))
            train_loss, test_error = evaluations.get(step, (None, None))
            yield (
                run.study,
                run.optimizer,
                str(run.seed),
                _format_float(run.lr_multiplier),
                str(step),
                _format_float(minibatch_loss),
                _format_float(step_time),
                _format_float(train_loss),
                _format_float(test_error),
            )


def write_curves_csv(runs, path):
    """Write every curve of ``runs`` to ``path`` in long format (``CSV_COLUMNS``)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(curve_rows(runs))


def compare_with_csv(record, path):
    """Return the differences between ``record``'s runs and the CSV at ``path``.

    An empty list means the CSV contains exactly the curves of the record.
    """
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        rows = [tuple(row) for row in reader]
    if header != CSV_COLUMNS:
        return [f"header is {header}, expected {CSV_COLUMNS}"]
    expected = list(curve_rows(record.runs))
    problems = []
    if len(rows) != len(expected):
        problems.append(f"{len(rows)} rows in the CSV, {len(expected)} in the JSON")
    for index, (got, want) in enumerate(zip(rows, expected, strict=False)):
        if not _rows_equal(got, want):
            problems.append(f"row {index + 2}: CSV {got} differs from JSON {want}")
            if len(problems) >= 10:
                break
    return problems


def _rows_equal(got, want):
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        if a == b:
            continue
        # Both numeric: compare values so "1e-05" and "1e-5" agree.
        try:
            x, y = float(a), float(b)
        except ValueError:
            return False
        if not (x == y or (math.isnan(x) and math.isnan(y))):
            return False
    return True


def _format_float(value):
    if value is None:
        return ""
    return repr(float(value))


def _decode_float(value):
    if value is None:
        return None
    return float(value)


def _encode(value):
    """Return ``value`` with non-finite floats as strings and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(key): _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path, data):
    # Write then rename, so an interrupted run never leaves half a file.
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, allow_nan=False)
        handle.write("\n")
    tmp.replace(path)
