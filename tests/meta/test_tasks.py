"""The task sampler: reproducible, distinct per rank and episode, class subsets."""

import pytest
import torch

from slstm.data import load_dataset
from slstm.meta.tasks import Task, TaskData, TaskSampler, build_task_model


def test_task_depends_only_on_seed_rank_episode():
    sampler = TaskSampler(3, ["small_cnn", "mnist_cnn"], {"channels": [4, 8]},
                          num_classes=10, task_classes=4)  # fmt: skip
    again = TaskSampler(3, ["small_cnn", "mnist_cnn"], {"channels": [4, 8]},
                        num_classes=10, task_classes=4)  # fmt: skip
    tasks = [sampler.sample(episode, rank) for rank in (0, 1) for episode in range(20)]
    # Drawing in another order gives the same tasks: no hidden generator state.
    replay = [again.sample(episode, rank) for rank in (1, 0) for episode in range(20)]
    assert tasks == replay[20:] + replay[:20]
    assert len({t.init_seed for t in tasks}) == len(tasks)
    assert {t.net for t in tasks} == {"small_cnn", "mnist_cnn"}
    assert {t.net_sizes["channels"] for t in tasks} == {4, 8}
    for task in tasks:
        assert len(task.classes) == 4
        assert len(set(task.classes)) == 4
        assert all(0 <= c < 10 for c in task.classes)


def test_validation_tasks_differ_from_training_tasks():
    sampler = TaskSampler(0, ["small_cnn"], num_classes=10)
    training = {sampler.sample(e).init_seed for e in range(50)}
    validation = [sampler.validation_task(i) for i in range(5)]
    assert validation == [sampler.validation_task(i) for i in range(5)]
    assert not training & {t.init_seed for t in validation}


def test_task_classes_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="task_classes=11"):
        TaskSampler(0, ["small_cnn"], num_classes=10, task_classes=11)


def test_class_subset_is_relabelled():
    data = TaskData(load_dataset("digits", validation=100, seed=0))
    subset = data.split("train", (3, 7))
    full = data.split("train")
    assert set(subset.targets.tolist()) == {0, 1}
    assert len(subset) == int(((full.targets == 3) | (full.targets == 7)).sum())
    first_three = full.inputs[full.targets == 3][0]
    assert torch.equal(subset.inputs[subset.targets == 0][0], first_three)
    assert data.split("train", (3, 7)) is subset  # cached


def test_building_model_leaves_global_generator_alone():
    task = Task("small_cnn", {"channels": 4, "hidden": 8}, None, 123, 0)
    before = torch.get_rng_state()
    first = build_task_model(task, (1, 8, 8), 10, "cpu")
    assert torch.equal(torch.get_rng_state(), before)
    second = build_task_model(task, (1, 8, 8), 10, "cpu")
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
