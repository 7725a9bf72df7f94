"""Joint recall (HAX paper, spec §1c "Joint recall"): layout, determinism, refusals, metric, shortcuts."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from longseq.tasks import IGNORE_INDEX, Task, TaskParameterError, available_tasks, build_task
from longseq.tasks.joint_recall import BOS, PAD, SEP, JointRecall


def parse(task: JointRecall, inputs: list[int], labels: list[int], n_c: int, n_k: int) -> None:
    """Assert the layout of one example with n_c contexts and n_k keys."""
    block = 1 + 2 * n_k
    section = n_c * block
    assert len(inputs) == len(labels) == task.seq_len
    labels = list(labels)
    # seq = inputs + its last token, which is never an input: the last label where supervised, else PAD.
    inputs = [*inputs, labels[-1] if labels[-1] != IGNORE_INDEX else PAD]
    assert inputs[0] == BOS and inputs[1 + section] == SEP
    assert inputs[2 + 2 * section :] == [PAD] * (task.seq_len + 1 - 2 - 2 * section)
    tables = []
    for start in (1, 2 + section):
        table: dict[tuple[int, int], int] = {}
        contexts = inputs[start : start + section : block]
        assert sorted(contexts) == [task.context_offset + c for c in range(n_c)]
        for b, context in enumerate(contexts):
            body = inputs[start + b * block + 1 : start + (b + 1) * block]
            keys, values = body[0::2], body[1::2]
            assert sorted(keys) == [task.key_offset + k for k in range(n_k)]
            assert all(10 <= v < 10 + task.num_values for v in values)
            table.update({(context, key): value for key, value in zip(keys, values, strict=True)})
        tables.append(table)
    assert tables[0] == tables[1]  # the query section shows the same table
    supervised = [p for p, v in enumerate(labels) if v != IGNORE_INDEX]
    query_keys = [2 + section + b * block + 1 + 2 * j for b in range(n_c) for j in range(n_k)]
    assert supervised == query_keys
    for p in supervised:
        context = inputs[2 + section + ((p - 2 - section) // block) * block]
        assert labels[p] == tables[0][(context, inputs[p])]
        assert inputs[p + 1] == labels[p]  # teacher forcing: the value is the next input


def test_docstring_worked_example():
    task = JointRecall(min_contexts=1, max_contexts=2, min_keys=1, max_keys=2)
    assert (task.seq_len, task.key_offset, task.context_offset) == (21, 26, 28)
    assert task.sizes(2) == (2, 1)
    inputs, labels = task.batch("train", [2])
    row = inputs[0].tolist()
    parse(task, row, labels[0].tolist(), 2, 1)
    # 1 c k v c k v 4 c k v c k v, then 7 pads (21 inputs).
    assert row[0] == 1 and row[7] == 4 and row[14:] == [3] * 7
    assert [p for p, v in enumerate(labels[0].tolist()) if v != IGNORE_INDEX] == [9, 12]


def test_default_layout_sizes_and_combinations():
    task = JointRecall()
    assert (task.seq_len, task.num_combinations, task.num_train, task.num_test) == (1057, 144, 1_440_000, 14_400)
    assert (task.sizes(0), task.sizes(11), task.sizes(12), task.sizes(143), task.sizes(144)) == (
        (5, 5),
        (5, 16),
        (6, 5),
        (16, 16),
        (5, 5),
    )
    indices = [0, 1, 13, 77, 143, 200, 14_399]
    inputs, labels = task.batch("test", indices)
    for row, index in enumerate(indices):
        parse(task, inputs[row].tolist(), labels[row].tolist(), *task.sizes(index))
    # The largest combination fills the whole sequence: its last value is the last label, never an input.
    big_inputs, big_labels = task.batch("train", [143])
    assert int(big_inputs[0, -1]) != PAD and int(big_labels[0, -1]) != IGNORE_INDEX
    assert int((big_labels != IGNORE_INDEX).sum()) == 256


@pytest.mark.parametrize(("n_c_range", "n_k_range"), [((1, 3), (1, 4)), ((2, 2), (3, 5)), ((4, 6), (1, 1))])
def test_other_ranges_are_well_formed(n_c_range, n_k_range):
    task = JointRecall(
        min_contexts=n_c_range[0],
        max_contexts=n_c_range[1],
        min_keys=n_k_range[0],
        max_keys=n_k_range[1],
        num_values=5,
        vocab_size=40,
    )
    inputs, labels = task.batch("train", range(30))
    for index in range(30):
        parse(task, inputs[index].tolist(), labels[index].tolist(), *task.sizes(index))


def test_values_are_uniform_and_generation_is_fast():
    task = JointRecall()
    start = time.perf_counter()
    _, labels = task.batch("train", range(20_000))
    assert time.perf_counter() - start < 15
    values = labels[labels != IGNORE_INDEX] - 10
    counts = torch.bincount(values, minlength=16).double()
    assert counts.numel() == 16
    expected = values.numel() / 16
    assert float(((counts - expected) ** 2 / expected).sum()) < 45  # 15 degrees of freedom: p < 1e-4


def test_examples_do_not_depend_on_the_batch_and_splits_differ():
    task = JointRecall()
    inputs, labels = task.batch("train", [5, 3])
    assert torch.equal(inputs, torch.cat([task.batch("train", [5])[0], task.batch("train", [3])[0]]))
    assert torch.equal(JointRecall().batch("train", np.array([3, 5, 3]))[1], labels[[1, 0, 1]])
    assert not torch.equal(task.batch("train", range(8))[0], task.batch("test", range(8))[0])
    assert not torch.equal(task.batch("train", range(8))[0], JointRecall(seed=1).batch("train", range(8))[0])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_contexts": 6, "max_contexts": 5}, r"min_contexts=6 > max_contexts=5"),
        ({"min_keys": 17}, r"min_keys=17 > max_keys=16"),
        ({"vocab_size": 57}, r"vocab_size=57 < 58: .*allowed: vocab_size >= 58"),
        ({"num_values": 1}, r"num_values=1: .*greater than 1"),
        ({"max_keys": 0}, r"max_keys=0"),
        ({"num_train": 0}, r"num_train=0"),
        ({"seed": -1}, r"seed=-1"),
        ({"vocab_size": 100.0}, r"vocab_size=100\.0: Input should be a valid integer"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_values(params, message):
    with pytest.raises(TaskParameterError, match=message):
        JointRecall(**params)


def test_protocol_registry_describe_and_metric():
    task = build_task("joint_recall", max_contexts=8, max_keys=8, seed=2)
    assert isinstance(task, Task)
    assert (task.name, task.metric_name, task.higher_is_better) == ("joint_recall", "accuracy", True)
    assert available_tasks()["joint_recall"].startswith("HAX joint recall")
    description = json.loads(json.dumps(task.describe()))
    rebuilt = build_task(**description)
    assert rebuilt.describe() == description
    assert torch.equal(rebuilt.batch("train", [9])[0], task.batch("train", [9])[0])
    scores = task.score(torch.tensor([1, 0, 3, 4]), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(scores, torch.tensor([0.5, 1.0]))


def test_label_frequency_and_position_predictors_score_at_chance():
    task = JointRecall()
    n = 3000
    _, train_labels = task.batch("train", range(n))
    _, test_labels = task.batch("test", range(n))
    supervised = test_labels != IGNORE_INDEX
    example_index = torch.nonzero(supervised)[:, 0]
    positions = torch.nonzero(supervised)[:, 1]
    targets = test_labels[supervised]
    most_frequent = int(torch.bincount(train_labels[train_labels != IGNORE_INDEX]).argmax())
    per_position = torch.full((task.seq_len,), -1)
    for position in torch.nonzero((train_labels != IGNORE_INDEX).any(0)).flatten().tolist():
        column = train_labels[:, position]
        per_position[position] = int(torch.bincount(column[column != IGNORE_INDEX]).argmax())
    p = 1 / task.num_values
    per_example_count = torch.bincount(example_index, minlength=n).double()
    sigma = math.sqrt(float((p * (1 - p) / per_example_count).sum())) / n
    for predictions in (torch.full_like(targets, most_frequent), per_position[positions]):
        score = float(task.score(predictions, targets, example_index, n).mean())
        assert score <= p + 3 * sigma, (score, p, sigma)
