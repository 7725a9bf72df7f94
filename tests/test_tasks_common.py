"""What every registered task promises, checked on each with its default parameters: an example is a function of
(seed, split, index) only — not of the batch it is asked in, nor of its order — train and test streams differ,
another seed gives other data, ``describe()`` rebuilds an identical task, batches have the shapes and value
ranges of the task's kind (token task or classification task, ``longseq.tasks.base``), and every classification
task, only they, has a validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longseq.tasks import (
    IGNORE_INDEX,
    ClassificationTask,
    ExampleIndexError,
    Task,
    available_tasks,
    build_task,
    is_classification,
    padding_mask,
)
from longseq.tasks.base import VAL_SPLITS, is_classification_class, task_class, task_splits

TASKS = sorted(available_tasks())


@pytest.mark.parametrize("name", TASKS)
def test_examples_do_not_depend_on_batch_composition_or_order(name):
    task = build_task(name)
    inputs, labels = task.batch("train", [5, 3])
    five, three = task.batch("train", [5]), task.batch("train", [3])
    assert torch.equal(inputs, torch.cat([five[0], three[0]]))
    assert torch.equal(labels, torch.cat([five[1], three[1]]))
    rebuilt = build_task(name).batch("train", np.array([3, 5, 3]))
    assert torch.equal(rebuilt[0], inputs[[1, 0, 1]]) and torch.equal(rebuilt[1], labels[[1, 0, 1]])


@pytest.mark.parametrize("name", TASKS)
def test_train_and_test_streams_and_seeds_differ(name):
    task = build_task(name)
    train, test = task.batch("train", range(16))[0], task.batch("test", range(16))[0]
    assert not torch.equal(train, test)
    assert not torch.equal(train, build_task(name, seed=1).batch("train", range(16))[0])
    assert not torch.equal(train[0], train[1])


@pytest.mark.parametrize("name", TASKS)
def test_describe_rebuilds_an_identical_task(name):
    task = build_task(name)
    again = build_task(**task.describe())
    assert again.describe() == task.describe()
    assert all(torch.equal(a, b) for a, b in zip(task.batch("test", [0, 7]), again.batch("test", [0, 7]),
                                                    strict=True))


@pytest.mark.parametrize("name", TASKS)
def test_bad_splits_and_indices_are_refused(name):
    task = build_task(name)
    with pytest.raises(ExampleIndexError, match=r"unknown split 'valid'; allowed: 'train', "):
        task.batch("valid", [0])
    if "val" not in task_splits(task):
        with pytest.raises(ExampleIndexError, match=r"unknown split 'val'; allowed: 'train', 'test'$"):
            task.num_examples("val")
    size = task.num_examples("test")
    with pytest.raises(ExampleIndexError, match=rf"index {size} is out of range for split 'test'"):
        task.batch("test", [size])
    with pytest.raises(ExampleIndexError, match=r"index -1 is out of range"):
        task.batch("train", [-1])
    inputs, labels = task.batch("train", [])
    assert inputs.shape == (0, task.seq_len)
    assert labels.shape == ((0,) if is_classification(task) else (0, task.seq_len))


@pytest.mark.parametrize("name", TASKS)
def test_batches_have_the_shapes_and_ranges_of_the_task_kind(name):
    task = build_task(name)
    assert isinstance(task, Task)
    inputs, labels = task.batch("test", range(4))
    assert inputs.dtype == labels.dtype == torch.int64
    assert inputs.shape == (4, task.seq_len)
    assert int(inputs.min()) >= 0 and int(inputs.max()) < task.vocab_size
    mask = padding_mask(task, inputs)
    if mask is not None:  # right padding: each row is its tokens, then pad_id to the end, and holds a token
        assert mask[:, 0].all() and not (~mask[:, :-1] & mask[:, 1:]).any()
    if is_classification(task):
        assert isinstance(task, ClassificationTask) and task.num_classes >= 2
        assert labels.shape == (4,)
        assert int(labels.min()) >= 0 and int(labels.max()) < task.num_classes
        perfect = task.score(labels, labels, torch.arange(4), 4)
        assert torch.equal(perfect, torch.ones(4))
    else:
        assert getattr(task, "num_classes", None) is None
        assert labels.shape == inputs.shape
        supervised = labels != IGNORE_INDEX
        assert supervised.any(dim=1).all()
        assert int(labels[supervised].min()) >= 0 and int(labels[supervised].max()) < task.vocab_size


@pytest.mark.parametrize("name", TASKS)
def test_classification_tasks_have_a_validation_split_and_token_tasks_none(name):
    """The validation split is LRA's (test accuracy at the best validation checkpoint): every classification
    task has one, drawn from streams or data of its own; token tasks refuse it (tasks/base.py)."""
    task = build_task(name)
    assert is_classification_class(task_class(name)) == is_classification(task)
    if not is_classification(task):
        assert task_splits(task) == ("train", "test")
        return
    assert task_splits(task) == VAL_SPLITS
    size = task.num_examples("val")
    assert size >= 1
    val = task.batch("val", range(min(8, size)))
    again = build_task(name).batch("val", range(min(8, size)))
    assert all(torch.equal(a, b) for a, b in zip(val, again, strict=True))
    for other in ("train", "test"):
        assert not torch.equal(val[0], task.batch(other, range(min(8, size)))[0])
    with pytest.raises(ExampleIndexError, match=rf"index {size} is out of range for split 'val'"):
        task.batch("val", [size])
