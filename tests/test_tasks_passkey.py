"""Passkey retrieval (spec §1c "Passkey retrieval", §1f): layout, depth, determinism, refusals, metric, shortcuts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from longseq.tasks import IGNORE_INDEX, Task, TaskParameterError, available_tasks, build_task
from longseq.tasks.passkey import (
    FILLER_BLOCK,
    KEY_HEAD,
    KEY_TAIL,
    PREFIX,
    QUESTION,
    VOCAB_SIZE,
    WORDS,
    Passkey,
    encode,
    min_seq_len,
)


def parse(task: Passkey, inputs: list[int], labels: list[int]) -> tuple[list[int], int]:
    """(key digits, insertion point t) of one example, asserting the whole layout on the way."""
    k, big_f, length = task.num_digits, task.filler_len, task.seq_len
    assert len(inputs) == len(labels) == length
    assert inputs[: len(PREFIX)] == PREFIX.tolist()
    head = KEY_HEAD.tolist()
    starts = [p for p in range(len(PREFIX), length) if inputs[p : p + len(head)] == head]
    assert len(starts) == 1, starts
    t = starts[0] - len(PREFIX)
    assert 0 <= t <= big_f
    digits = inputs[starts[0] + len(head) : starts[0] + len(head) + k]
    assert all(0 <= d <= 9 for d in digits)
    after_key = starts[0] + len(head) + k
    assert inputs[after_key : after_key + len(KEY_TAIL)] == KEY_TAIL.tolist()
    filler = inputs[len(PREFIX) : starts[0]] + inputs[after_key + len(KEY_TAIL) : after_key + len(KEY_TAIL) + big_f - t]
    assert filler == np.tile(FILLER_BLOCK, big_f // len(FILLER_BLOCK) + 1)[:big_f].tolist()
    question_at = len(PREFIX) + big_f + task.key_sentence_len
    assert inputs[question_at : question_at + len(QUESTION)] == QUESTION.tolist()
    assert inputs[question_at + len(QUESTION) :] == digits[:-1]
    expected = [IGNORE_INDEX] * (length - k) + digits
    assert labels == expected
    return digits, t


def test_vocabulary_is_digits_then_words_in_order_of_appearance():
    assert VOCAB_SIZE == 10 + len(WORDS) == 50
    assert len(set(WORDS)) == len(WORDS)
    assert encode("the pass key is 7 3 .").tolist() == [32, 34, 35, 11, 7, 3, 22]
    assert (len(PREFIX), len(QUESTION), len(FILLER_BLOCK)) == (29, 6, 24)
    assert min_seq_len(5) == 29 + 13 + 6 + 5 - 1


def test_docstring_worked_example():
    task = Passkey(seq_len=50, num_digits=2, depth=0.5)
    assert (task.filler_len, task.insertion_point(0.5)) == (4, 2)
    inputs, labels = task.batch("train", range(20))
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist(), strict=True):
        digits, t = parse(task, row_inputs, row_labels)
        assert t == 2
        assert row_inputs[29:] == [
            32,
            39,
            32,
            34,
            35,
            11,
            *digits,
            22,
            36,
            24,
            22,
            11,
            40,
            37,
            11,
            32,
            34,
            35,
            38,
            digits[0],
        ]
        assert [p for p, v in enumerate(row_labels) if v != IGNORE_INDEX] == [48, 49]


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_depth_sets_the_key_position_exactly(depth):
    task = Passkey(seq_len=300, depth=depth, num_digits=5)
    inputs, labels = task.batch("test", range(8))
    expected = math.floor(depth * task.filler_len + 0.5)
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist(), strict=True):
        assert parse(task, row_inputs, row_labels)[1] == expected
    if depth == 0.0:
        assert expected == 0
    if depth == 1.0:
        assert expected == task.filler_len


def test_random_depth_covers_the_filler_uniformly():
    task = Passkey(seq_len=120, num_digits=3)
    inputs, labels = task.batch("train", range(2000))
    points = [parse(task, i, lab)[1] for i, lab in zip(inputs.tolist(), labels.tolist(), strict=True)]
    counts = np.bincount(points, minlength=task.filler_len + 1)
    assert len(counts) == task.filler_len + 1 and counts.min() > 0
    assert abs(np.mean(points) - task.filler_len / 2) < 3 * math.sqrt((task.filler_len + 1) ** 2 / 12 / 2000) + 0.5


@pytest.mark.parametrize("num_digits", [1, 5, 8])
def test_shortest_length_has_no_filler_and_one_shorter_is_refused(num_digits):
    shortest = min_seq_len(num_digits)
    task = Passkey(seq_len=shortest, num_digits=num_digits, depth=0.3)
    assert task.filler_len == 0
    inputs, labels = task.batch("train", [0, 1])
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist(), strict=True):
        parse(task, row_inputs, row_labels)
    with pytest.raises(TaskParameterError, match=rf"seq_len={shortest - 1} is too short .*seq_len >= {shortest}"):
        Passkey(seq_len=shortest - 1, num_digits=num_digits)


def test_digits_are_uniform():
    task = Passkey(seq_len=100, num_digits=4)
    _, labels = task.batch("train", range(2500))
    digits = labels[labels != IGNORE_INDEX]
    counts = torch.bincount(digits, minlength=10).double()
    expected = digits.numel() / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 35  # 9 degrees of freedom: p < 1e-4


def test_generation_is_vectorised_enough():
    import time

    task = Passkey(seq_len=512)
    start = time.perf_counter()
    inputs, _ = task.batch("train", range(20_000))
    assert inputs.shape == (20_000, 512)
    assert time.perf_counter() - start < 10


# ---------------------------------------------------------------------------------------------------------
# Determinism and splits


def test_examples_do_not_depend_on_the_batch_and_splits_differ():
    task = Passkey(seq_len=200)
    inputs, labels = task.batch("train", [5, 3])
    assert torch.equal(inputs, torch.cat([task.batch("train", [5])[0], task.batch("train", [3])[0]]))
    assert torch.equal(Passkey(seq_len=200).batch("train", np.array([3, 5, 3]))[1], labels[[1, 0, 1]])
    train, test = task.batch("train", range(16))[0], task.batch("test", range(16))[0]
    assert not torch.equal(train, test)
    assert not torch.equal(train, Passkey(seq_len=200, seed=1).batch("train", range(16))[0])


# ---------------------------------------------------------------------------------------------------------
# Refusals, metric, interface


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"depth": 1.5}, r"depth=1\.5: .*less than or equal to 1"),
        ({"depth": -0.1}, r"depth=-0\.1: .*greater than or equal to 0"),
        ({"depth": float("nan")}, r"depth=nan"),
        ({"num_digits": 0}, r"num_digits=0: .*greater than 0"),
        ({"num_digits": 33}, r"num_digits=33: .*less than or equal to 32"),
        ({"seq_len": 10}, r"seq_len=10 is too short for the template with num_digits=5: allowed seq_len >= 52"),
        ({"seq_len": 512.0}, r"seq_len=512\.0: Input should be a valid integer"),
        ({"num_test": 0}, r"num_test=0"),
        ({"seed": -1}, r"seed=-1"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_values(params, message):
    with pytest.raises(TaskParameterError, match=message):
        Passkey(**params)


def test_score_is_exact_match():
    task = Passkey(num_digits=3)
    targets = torch.tensor([1, 2, 3, 4, 5, 6])
    example_index = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.equal(task.score(targets, targets, example_index, 2), torch.ones(2))
    predictions = torch.tensor([1, 2, 3, 4, 0, 6])
    assert torch.equal(task.score(predictions, targets, example_index, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"needs supervised positions"):
        task.score(targets, targets, example_index, 3)


def test_protocol_registry_and_describe():
    task = build_task("passkey", seq_len=128, depth=0.25, num_digits=4, seed=3)
    assert isinstance(task, Task)
    assert (task.name, task.metric_name, task.vocab_size) == ("passkey", "exact_match", 50)
    assert available_tasks()["passkey"].startswith("Passkey retrieval")
    description = json.loads(json.dumps(task.describe()))
    rebuilt = build_task(**description)
    assert rebuilt.describe() == description
    assert torch.equal(rebuilt.batch("test", [7])[0], task.batch("test", [7])[0])
    assert build_task("passkey", depth=0).depth == 0.0  # YAML's 0 is a depth too


# ---------------------------------------------------------------------------------------------------------
# No shortcut


@pytest.mark.parametrize("depth", [None, 0.5])
def test_label_frequency_and_position_predictors_score_at_chance(depth):
    task = Passkey(seq_len=96, num_digits=2, depth=depth, num_train=4000, num_test=4000)
    _, train_labels = task.batch("train", range(4000))
    _, test_labels = task.batch("test", range(4000))
    supervised = test_labels != IGNORE_INDEX
    example_index = torch.nonzero(supervised)[:, 0]
    targets = test_labels[supervised]
    train_targets = train_labels[train_labels != IGNORE_INDEX]
    most_frequent = int(torch.bincount(train_targets).argmax())
    per_position = torch.full((task.seq_len,), -1)
    for position in torch.nonzero((train_labels != IGNORE_INDEX).any(0)).flatten().tolist():
        column = train_labels[:, position]
        per_position[position] = int(torch.bincount(column[column != IGNORE_INDEX]).argmax())
    positions = torch.nonzero(supervised)[:, 1]
    chance = 10.0**-task.num_digits
    sigma = math.sqrt(chance * (1 - chance) / 4000)
    for predictions in (torch.full_like(targets, most_frequent), per_position[positions]):
        score = float(task.score(predictions, targets, example_index, 4000).mean())
        assert score <= chance + 3 * sigma, score
