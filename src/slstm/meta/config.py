"""The configuration of one meta-training run, saved beside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

OPTIMIZER_KINDS = ("lstm", "slstm")
META_LOSSES = ("sum", "log")
LOSS_WEIGHTINGS = ("uniform", "linear", "last")


@dataclass
class MetaTrainConfig:
    """Every option of ``slstm meta-train``; round-trips through JSON.

    Attributes:
        optimizer: ``"lstm"`` (gradient only) or ``"slstm"`` (gradient and
            diagonal Hessian).
        data, data_dir, classes, image_size: the data set, as
            :func:`slstm.data.load_dataset` reads it.
        validation: examples carved from the training split for validation
            (an int count or a float fraction); validation never trains on the
            examples that episodes see.
        net, net_sizes: the optimizee network, built by
            :func:`slstm.models.build_model` with ``net_sizes`` as keywords.
        task_classes: when set, each episode trains on a random subset of this
            many classes (relabelled ``0..k-1``); None uses every class.
        episodes: meta-training episodes per process.
        horizon: inner optimisation steps per episode.
        horizon_schedule: a curriculum over horizons, as ``[episode, steps]``
            pairs with increasing episodes: from episode ``episode`` (counted
            from 0) on, episodes have ``steps`` steps. Before the first pair
            they have ``horizon``. None keeps ``horizon`` throughout.
        unroll: steps per truncation ``T``; the update networks get one
            meta-update per truncation.
        batch_size: minibatch size of the optimizee.
        seed: seeds the training tasks, the minibatch order and the update
            networks' initialisation.
        validation_seed: seeds the validation split and the validation
            networks. It is separate from ``seed`` so that runs with other seeds,
            and runs continued from a checkpoint, hold out the same examples
            and score the same networks. A saved configuration without it
            predates the option and used ``seed`` for both.
        out: output folder (configuration, metrics, checkpoints).
        meta_lr: learning rate of the Adam meta-optimizer.
        clip_norm: the meta-gradient is rescaled to at most this L2 norm.
        meta_loss: ``"sum"`` minimises ``sum_t w_t L(theta_t)``; ``"log"``
            minimises ``sum_t w_t log L(theta_t)`` (rewards relative progress,
            so late steps with small losses still matter).
        loss_weights: ``w_t`` over the ``T`` steps of a truncation:
            ``"uniform"`` (all 1), ``"linear"`` (``t/T``), ``"last"`` (only the
            last step), or ``T`` comma-separated numbers.
        recompute_updates: recompute the update networks' activations in the
            meta-backward instead of keeping them (less memory, about one more
            update-network forward pass per step).
        divergence_factor: an episode ends as diverged when the optimizee's
            loss is non-finite or above this factor times its initial loss.
        validate_every: episodes between validations (0 disables them).
        validation_tasks: fresh networks trained per validation.
        validation_horizon: steps of each validation run (None: ``horizon``),
            or an increasing list of step counts. With a list, each network is
            scored after each count within one run. The validation loss that
            chooses ``best.pt`` is then the mean over the counts and networks.
            An optimizer that is good at the meta-training horizon but stalls
            later is then not chosen.
        checkpoint_every: episodes between checkpoints (one is also written
            at exit).
        keep_validated: also save the update networks of every validation as
            ``validated/episode-NNNNNN.pt``, so that a checkpoint other than
            ``best.pt`` (one fast at one step count, say) can be calibrated or
            compared later.
        snapshot_every: also save the update networks every this many
            episodes as ``snapshots/episode-NNNNNN.pt``, without validating
            them (0: never). Such files cost no validation time, so a run can
            keep many of them to average (``slstm average``).
        curvature_method: how SLSTM's diagonal Hessian is computed
            (a method of :mod:`slstm.curvature`).
        output_scale, hidden_size, num_layers, preprocess_p: the learned
            optimizer's architecture (see
            :class:`slstm.optim.LearnedOptimizerConfig`).
        init: an optimizer checkpoint (path or shipped name) whose weights the
            update networks start from instead of a fresh initialisation; its
            inputs and architecture must match. None starts fresh.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        search: number of random-search trials for ``meta_lr`` (0: no search).
        search_low, search_high: the log-uniform interval of the search.
        search_episodes: episodes each search trial meta-trains for.
        search_storage: Optuna storage URL (default: SQLite file in ``out``).
        num_threads: torch CPU threads per process (None: torch's default).
    """

    optimizer: str = "slstm"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    classes: int | list[int] | None = None
    image_size: int = 64
    validation: int | float = 0.1
    net: str = "mnist_cnn"
    net_sizes: dict = field(default_factory=dict)
    task_classes: int | None = None
    episodes: int = 100
    horizon: int = 100
    horizon_schedule: list | None = None
    unroll: int = 20
    batch_size: int = 128
    seed: int = 0
    validation_seed: int = 0
    out: str = "runs/meta-train"
    meta_lr: float = 1e-3
    clip_norm: float = 1.0
    meta_loss: str = "sum"
    loss_weights: str = "uniform"
    recompute_updates: bool = False
    divergence_factor: float = 10.0
    validate_every: int = 10
    validation_tasks: int = 2
    validation_horizon: int | list[int] | None = None
    checkpoint_every: int = 5
    keep_validated: bool = False
    snapshot_every: int = 0
    curvature_method: str = "becker-lecun"
    output_scale: float = 0.1
    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = 10.0
    init: str | None = None
    device: str = "auto"
    search: int = 0
    search_low: float = 1e-4
    search_high: float = 1e-2
    search_episodes: int = 20
    search_storage: str | None = None
    num_threads: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid option and its fix."""
        if self.optimizer not in OPTIMIZER_KINDS:
            raise ValueError(
                f"optimizer must be one of {OPTIMIZER_KINDS}, got {self.optimizer!r}"
            )
        if self.meta_loss not in META_LOSSES:
            raise ValueError(
                f"meta_loss must be one of {META_LOSSES}, got {self.meta_loss!r}"
            )
        for name in ("episodes", "horizon", "unroll", "batch_size", "hidden_size"):
            _require_positive_int(name, getattr(self, name))
        _require_positive_int("num_layers", self.num_layers)
        for name in ("validate_every", "checkpoint_every", "snapshot_every", "search"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        _require_positive_int("validation_tasks", self.validation_tasks)
        if not isinstance(self.keep_validated, bool):
            raise ValueError(
                f"keep_validated must be true or false, got {self.keep_validated!r}"
            )
        if self.num_threads is not None:
            _require_positive_int("num_threads", self.num_threads)
        _require_positive_int("search_episodes", self.search_episodes)
        if isinstance(self.validation_horizon, list | tuple):
            counts = _increasing_step_counts(
                "validation_horizon", self.validation_horizon
            )
            # One count is stored as an int, so [100] and 100 compare equal.
            self.validation_horizon = counts[0] if len(counts) == 1 else counts
        elif self.validation_horizon is not None:
            _require_positive_int("validation_horizon", self.validation_horizon)
        if self.horizon_schedule is not None:
            self.horizon_schedule = _horizon_schedule(self.horizon_schedule)
        if self.task_classes is not None:
            _require_positive_int("task_classes", self.task_classes)
            if self.task_classes < 2:
                raise ValueError(
                    f"task_classes must be at least 2 (a classifier needs two "
                    f"classes), got {self.task_classes}"
                )
        for name in ("meta_lr", "clip_norm", "output_scale", "preprocess_p"):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        from slstm.optim import CURVATURE_METHODS

        if self.curvature_method not in CURVATURE_METHODS:
            raise ValueError(
                f"curvature_method must be one of {CURVATURE_METHODS}, got "
                f"{self.curvature_method!r}"
            )
        if self.optimizer == "lstm" and self.curvature_method != "becker-lecun":
            # The LSTM optimizer never reads h; a recorded method would only
            # stop its checkpoints from matching other LSTM runs.
            raise ValueError(
                f"curvature_method {self.curvature_method!r} has no effect on the "
                "lstm optimizer, which reads no diagonal Hessian; drop "
                "--curvature-method (or use optimizer slstm)"
            )
        if not self.divergence_factor > 1:
            raise ValueError(
                f"divergence_factor must be above 1, got {self.divergence_factor!r}"
            )
        if not 0 < self.search_low < self.search_high:
            raise ValueError(
                f"the search interval needs 0 < search_low < search_high, got "
                f"{self.search_low!r} and {self.search_high!r}"
            )
        if not (
            self.device in ("auto", "cpu", "cuda")
            or (isinstance(self.device, str) and self.device.startswith("cuda:"))
        ):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        for name in ("seed", "validation_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
            if not 0 <= value < 2**63:
                raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")
        if self.init is not None and not (isinstance(self.init, str) and self.init):
            raise ValueError(
                f"init must be the path or shipped name of an optimizer checkpoint, "
                f"got {self.init!r}; omit it to start from fresh networks"
            )
        if not isinstance(self.net_sizes, dict):
            raise ValueError(
                "net_sizes must be a dict of size names to values, got "
                f"{self.net_sizes!r}"
            )
        self.step_weights()  # raises on a malformed loss_weights

    @property
    def uses_hessian(self) -> bool:
        return self.optimizer == "slstm"

    @property
    def longest_horizon(self) -> int:
        """The maximum number of steps of an episode, over ``horizon`` and the
        schedule."""
        return max([self.horizon] + [s for _, s in self.horizon_schedule or ()])

    @property
    def truncations_per_episode(self) -> int:
        """Truncations of an episode of ``horizon`` steps (the first episode)."""
        return self.truncations_at(0)

    def horizon_at(self, episode: int) -> int:
        """Steps of episode ``episode`` (from 0) under ``horizon_schedule``."""
        steps = self.horizon
        for start, scheduled in self.horizon_schedule or ():
            if episode >= start:
                steps = scheduled
        return steps

    def truncations_at(self, episode: int) -> int:
        # Integer ceiling: a float division overflows for very long horizons.
        return -(-self.horizon_at(episode) // self.unroll)

    @property
    def validation_horizons(self) -> list[int]:
        """The step counts after which validation scores each network."""
        if self.validation_horizon is None:
            return [self.horizon]
        if isinstance(self.validation_horizon, list):
            return list(self.validation_horizon)
        return [self.validation_horizon]

    def step_weights(self, length: int | None = None) -> list[float]:
        """Return ``w_1 .. w_T`` for a truncation of ``length`` steps (default T).

        The last truncation of an episode is shorter than ``T`` when ``horizon``
        is not a multiple of it. It then uses the first ``length`` weights of an
        explicit list, and ``"linear"`` is recomputed for its length.
        """
        length = self.unroll if length is None else length
        spec = self.loss_weights.strip()
        if spec == "uniform":
            return [1.0] * length
        if spec == "linear":
            return [(t + 1) / length for t in range(length)]
        if spec == "last":
            return [0.0] * (length - 1) + [1.0]
        try:
            weights = [float(part) for part in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"loss_weights must be one of {LOSS_WEIGHTINGS} or {self.unroll} "
                f"comma-separated numbers, got {self.loss_weights!r}"
            ) from None
        if len(weights) != self.unroll:
            raise ValueError(
                f"loss_weights lists {len(weights)} numbers but the unroll has "
                f"T={self.unroll} steps; give exactly {self.unroll}"
            )
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) == 0:
            raise ValueError(
                f"loss_weights must be finite, non-negative and not all zero, got "
                f"{self.loss_weights!r}"
            )
        return weights[:length]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MetaTrainConfig:
        """Build a config from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown meta-training option(s) {unknown}; known options are "
                f"{sorted(known)}"
            )
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict) -> MetaTrainConfig:
        """Build a config from options an earlier run saved, in any version."""
        seed = saved_validation_seed(values)
        if seed is not None:
            values = {**values, "validation_seed": seed}
        return cls.from_dict(values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> MetaTrainConfig:
        return cls.from_saved(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> MetaTrainConfig:
        """Read a ``config.json``; ValueError names the file when it is unusable."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"{str(path)!r} is not a file; pass the config.json of a "
                "meta-training run"
            )
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{str(path)!r} is not a JSON meta-training configuration: {error}"
            ) from None
        if not isinstance(values, dict):
            raise ValueError(
                f"{str(path)!r} contains a JSON {type(values).__name__}, not an object "
                "of meta-training options"
            )
        return cls.from_saved(values)

    def replace(self, **changes) -> MetaTrainConfig:
        return dataclasses.replace(self, **changes)


def saved_validation_seed(values: dict) -> int | None:
    """Return the validation seed of a saved run's options, None if unknown.

    A run saved before ``validation_seed`` existed carved its split with
    ``seed``, so that is its validation seed.
    """
    return values.get("validation_seed", values.get("seed"))


def _require_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _increasing_step_counts(name: str, values) -> list[int]:
    values = list(values)
    for value in values:
        _require_positive_int(name, value)
    if not values or values != sorted(set(values)):
        raise ValueError(
            f"{name} must be increasing step counts such as [100, 1000], got {values}"
        )
    return values


def _horizon_schedule(schedule) -> list[list[int]]:
    """Check ``[[episode, steps], ...]`` and return it as a list of lists."""
    example = "[[20, 200], [60, 400]] (from episode 20: 200 steps; from 60: 400)"
    try:
        pairs = [list(pair) for pair in schedule]
    except TypeError:
        pairs = None
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ValueError(
            f"horizon_schedule must be [episode, steps] pairs such as {example}, "
            f"got {schedule!r}"
        )
    for episode, steps in pairs:
        if isinstance(episode, bool) or not isinstance(episode, int) or episode < 0:
            raise ValueError(
                f"horizon_schedule episodes must be ints >= 0, got {episode!r} in "
                f"{schedule!r}"
            )
        _require_positive_int("horizon_schedule steps", steps)
    episodes = [episode for episode, _ in pairs]
    if episodes != sorted(set(episodes)):
        raise ValueError(
            f"horizon_schedule episodes must increase, got {episodes}; write the "
            f"pairs in order, e.g. {example}"
        )
    return pairs


def parse_step_counts(text: str) -> list[int]:
    """Parse ``"100,1000"`` into ``[100, 1000]``: increasing positive ints."""
    try:
        counts = [int(part.strip()) for part in text.split(",")]
        return _increasing_step_counts("step counts", counts)
    except ValueError:
        raise ValueError(
            f"expected increasing positive step counts separated by commas, such "
            f"as 100,1000, got {text!r}"
        ) from None


def parse_horizon_schedule(text: str) -> list[list[int]]:
    """Parse ``"20:200,60:400"`` into ``[[20, 200], [60, 400]]``."""
    usage = (
        "write EPISODE:STEPS pairs with increasing episodes >= 0 and steps >= 1, "
        "separated by commas, e.g. 20:200,60:400"
    )
    pairs = []
    for item in text.split(","):
        episode, sep, steps = item.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append([int(episode), int(steps)])
        except ValueError:
            raise ValueError(
                f"invalid horizon schedule entry {item.strip()!r} in {text!r}; {usage}"
            ) from None
    try:
        return _horizon_schedule(pairs)
    except ValueError:
        raise ValueError(f"invalid horizon schedule {text!r}; {usage}") from None


def parse_net_sizes(text: str | None) -> dict:
    """Parse ``"channels=16,hidden=32"`` into ``{"channels": 16, "hidden": 32}``.

    Values that parse as int become ints, then floats, else stay strings. A
    value ``8|16`` is a list of choices that the task sampler draws from.
    """
    sizes: dict = {}
    if not text:
        return sizes
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(
                f"invalid network size {item!r} in {text!r}; write NAME=VALUE pairs "
                "separated by commas, e.g. channels=16,hidden=32"
            )
        choices = [_parse_number(v.strip()) for v in value.split("|")]
        sizes[name.strip()] = choices[0] if len(choices) == 1 else choices
    return sizes


def _parse_number(value: str):
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value
