"""Meta-training tasks: which network, on which classes, from which seeds.

A task fixes everything random about one episode: the optimizee architecture
and sizes, the class subset, the initialisation seed and the seed of the
minibatch order. :class:`TaskSampler` draws task ``i`` of rank ``r`` from a
NumPy generator seeded with ``(seed, r, i)``, so a task depends only on those
three numbers. Its state is therefore the episode counter alone, so a resumed
run draws exactly the tasks of an uninterrupted run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# Stream ids that keep training and validation tasks apart for one seed.
_TRAIN_STREAM = 0
_VALIDATION_STREAM = 1


@dataclass(frozen=True)
class Task:
    """One optimizee problem.

    NOTE: the data set is fixed per run (``--data``); tasks vary the network,
    the class subset and the seeds, not the data set.

    Attributes:
        net: a name in :data:`slstm.models.MODELS`.
        net_sizes: keyword sizes for :func:`slstm.models.build_model`.
        classes: class ids of the loaded data set this task trains on, or None
            for all of them.
        init_seed: seed of the network's initialisation.
        data_seed: seed of the minibatch order (and of Hutchinson probes).
    """

    net: str
    net_sizes: dict = field(default_factory=dict)
    classes: tuple[int, ...] | None = None
    init_seed: int = 0
    data_seed: int = 0


class TaskSampler:
    """Draws reproducible tasks for meta-training and validation.

    Args:
        seed: the run's seed, which draws the training tasks.
        nets: network names to choose from uniformly.
        net_sizes: sizes for every network. A value that is a list or tuple is a
            set of choices, drawn uniformly per task (``{"channels": [8, 16]}``).
        num_classes: classes in the loaded data set.
        task_classes: when set, each task uses a uniformly drawn subset of this
            many classes; None uses all classes.
        validation_seed: draws the validation tasks (default: ``seed``).
    """

    def __init__(
        self,
        seed: int,
        nets: Sequence[str],
        net_sizes: dict | None = None,
        *,
        num_classes: int,
        task_classes: int | None = None,
        validation_seed: int | None = None,
    ):
        if not nets:
            raise ValueError("nets is empty; name at least one network")
        if task_classes is not None and not 2 <= task_classes <= num_classes:
            raise ValueError(
                f"task_classes={task_classes} must lie between 2 and the data set's "
                f"{num_classes} classes"
            )
        self.seed = int(seed)
        self.validation_seed = int(seed if validation_seed is None else validation_seed)
        self.nets = list(nets)
        self.net_sizes = dict(net_sizes or {})
        self.num_classes = int(num_classes)
        self.task_classes = task_classes

    def sample(self, episode: int, rank: int = 0) -> Task:
        """Return the task of ``episode`` (0-based) on ``rank``."""
        return self._draw(
            np.random.default_rng([self.seed, _TRAIN_STREAM, rank, episode])
        )

    def validation_task(self, index: int) -> Task:
        """Return validation task ``index``; the same for every rank and episode."""
        return self._draw(
            np.random.default_rng([self.validation_seed, _VALIDATION_STREAM, index])
        )

    def _draw(self, rng: np.random.Generator) -> Task:
        net = self.nets[int(rng.integers(len(self.nets)))]
        sizes = {}
        for name in sorted(self.net_sizes):
            value = self.net_sizes[name]
            if isinstance(value, list | tuple):
                value = value[int(rng.integers(len(value)))]
            sizes[name] = value
        classes = None
        if self.task_classes is not None and self.task_classes < self.num_classes:
            chosen = rng.choice(self.num_classes, size=self.task_classes, replace=False)
            classes = tuple(sorted(int(c) for c in chosen))
        init_seed, data_seed = (int(s) for s in rng.integers(0, 2**62, size=2))
        return Task(net, sizes, classes, init_seed, data_seed)


class TaskData:
    """A loaded data set and its class-subset views, built once and cached.

    Args:
        splits: the :class:`slstm.data.DataSplits` of the run.
        cache_size: how many class-subset views of a split to keep.
    """

    def __init__(self, splits, cache_size: int = 8):
        self.splits = splits
        self.num_classes = splits.num_classes
        self.input_shape = tuple(splits.input_shape)
        self._views: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def split(self, name: str, classes: tuple[int, ...] | None = None):
        """Return split ``name`` restricted to ``classes`` and relabelled 0..k-1."""
        split = getattr(self.splits, name)
        if split is None:
            raise ValueError(
                f"the data set has no {name} split; set a validation size "
                "(--validation) to carve one from the training split"
            )
        if classes is None:
            return split
        key = (name, classes)
        if key in self._views:
            self._views.move_to_end(key)
            return self._views[key]
        view = _class_subset(split, classes)
        self._views[key] = view
        if len(self._views) > self._cache_size:
            self._views.popitem(last=False)
        return view


def _class_subset(split, classes: tuple[int, ...]):
    from slstm.data import TensorSplit

    if not isinstance(split, TensorSplit):
        raise ValueError(
            "class subsets per task need an in-memory data set; drop task_classes "
            "for a streaming image folder, or pick the classes once with --classes"
        )
    wanted = torch.tensor(classes, device=split.targets.device)
    mask = (split.targets.unsqueeze(1) == wanted).any(dim=1)
    # Relabel: class classes[i] becomes label i.
    size = max(int(split.targets.max()), max(classes)) + 1
    lookup = torch.full((size,), -1, dtype=torch.long, device=wanted.device)
    lookup[wanted] = torch.arange(len(classes), device=wanted.device)
    return TensorSplit(split.inputs[mask], lookup[split.targets[mask]])


def build_task_model(task: Task, input_shape, num_classes: int, device):
    """Build the task's network with its own initialisation seed.

    The global torch generator is forked, so building a model neither reads
    nor advances it.
    """
    from slstm.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.init_seed)
        model = build_model(task.net, tuple(input_shape), num_classes, **task.net_sizes)
    return model.to(device)


def task_num_classes(task: Task, data: TaskData) -> int:
    return len(task.classes) if task.classes is not None else data.num_classes
