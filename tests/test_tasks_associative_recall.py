"""Single-query associative recall (H3/Hyena, safari; spec §1c)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longseq.tasks.associative_recall as module
from longseq.tasks import IGNORE_INDEX, Task, TaskParameterError, available_tasks, build_task
from longseq.tasks._tokens import docstring_example, shortcut_accuracies
from longseq.tasks.associative_recall import AssociativeRecall


def layout_problems(inputs: list[int], labels: list[int], vocab_size: int) -> list[str]:
    """Everything in one example that departs from the documented layout; empty when it is well formed."""
    problems = []
    length = len(inputs)
    num_keys = (vocab_size - 1) // 2
    keys, values = inputs[0 : length - 2 : 2], inputs[1 : length - 2 : 2]
    if not all(1 <= k <= num_keys for k in keys):
        problems.append(f"keys {keys} are not in [1, {num_keys}]")
    if not all(num_keys < v < vocab_size for v in values):
        problems.append(f"values {values} are not in [{num_keys + 1}, {vocab_size})")
    value_of: dict[int, int] = {}
    for k, v in zip(keys, values, strict=True):
        if value_of.setdefault(k, v) != v:
            problems.append(f"key {k} has two values {value_of[k]} and {v}")
    if inputs[-2] != 0:
        problems.append(f"position {length - 2} holds {inputs[-2]}, not the query marker 0")
    if inputs[-1] not in value_of:
        problems.append(f"query key {inputs[-1]} does not occur in the context")
    if labels[:-1] != [IGNORE_INDEX] * (length - 1):
        problems.append("a position other than the last is supervised")
    if labels[-1] != value_of.get(inputs[-1]):
        problems.append(f"label {labels[-1]} is not the value of key {inputs[-1]}")
    return problems


def check_batch(task: AssociativeRecall, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    assert inputs.dtype == labels.dtype == torch.int64
    assert inputs.shape == labels.shape == (inputs.shape[0], task.seq_len)
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist(), strict=True):
        assert layout_problems(row_inputs, row_labels, task.vocab_size) == [], (row_inputs, row_labels)


# ---------------------------------------------------------------------------------------------------------
# Layout


def test_docstring_example_passes_the_layout_check_and_corruptions_fail_it():
    inputs, labels = docstring_example(module.__doc__)
    assert len(inputs) == len(labels) == 8
    assert layout_problems(inputs, labels, 10) == []
    wrong_value = [*labels[:-1], 6]
    absent_query = [*inputs[:-1], 2]
    inconsistent = list(inputs)
    inconsistent[5] = 8
    supervised_key = list(labels)
    supervised_key[0] = 3
    for bad_inputs, bad_labels in [
        (inputs, wrong_value),
        (absent_query, labels),
        (inconsistent, labels),
        (inputs, supervised_key),
    ]:
        assert layout_problems(bad_inputs, bad_labels, 10)


def test_default_task_is_safaris_default_and_well_formed():
    task = AssociativeRecall()
    assert (task.vocab_size, task.seq_len, task.num_pairs, task.num_keys, task.num_values) == (20, 42, 20, 9, 10)
    inputs, labels = task.batch("train", range(200))
    check_batch(task, inputs, labels)
    assert int((labels != IGNORE_INDEX).sum()) == 200


@settings(max_examples=30, deadline=None)
@given(vocab_size=st.integers(5, 40), num_pairs=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_every_valid_combination_gives_a_well_formed_batch(vocab_size, num_pairs, seed):
    task = AssociativeRecall(vocab_size=vocab_size, seq_len=2 * num_pairs + 2, seed=seed)
    check_batch(task, *task.batch("test", [0, 3, 499]))


def test_map_keys_and_query_are_drawn_as_documented():
    task = AssociativeRecall(vocab_size=11, seq_len=10, num_train=20_000)  # 5 keys, 5 values, 4 pairs
    inputs, labels = task.batch("train", range(20_000))
    keys = inputs[:, 0:8:2]
    # Pair keys are uniform with replacement: all four equal with probability 5 / 5^4.
    all_equal = (keys == keys[:, :1]).all(dim=1).float().mean()
    assert abs(float(all_equal) - 5 / 625) < 0.004
    # Values come from a map drawn with replacement: two distinct keys share a value with probability 1/5.
    distinct = keys[:, 0] != keys[:, 1]
    shared = (inputs[distinct, 1] == inputs[distinct, 3]).float().mean()
    assert abs(float(shared) - 0.2) < 0.02
    # The query is uniform over the distinct keys present: with exactly two present keys, each half the time.
    present = torch.zeros(20_000, 6, dtype=torch.bool).scatter_(1, keys, True)
    two = present.sum(dim=1) == 2
    smaller = torch.where(present[two], torch.arange(6), 99).min(dim=1).values
    assert abs(float((inputs[two, -1] == smaller).float().mean()) - 0.5) < 0.05
    assert set(labels[:, -1].tolist()) == set(range(6, 11))


# ---------------------------------------------------------------------------------------------------------
# Determinism, splits and lengths


@pytest.mark.parametrize("factor", [2, 4, 16])
def test_longer_test_lengths_are_well_formed(factor):
    task = AssociativeRecall(seq_len=42 * factor)
    check_batch(task, *task.batch("test", range(20)))


# ---------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"seq_len": 41}, r"seq_len=41 must be even and >= 4"),
        ({"seq_len": 2}, r"seq_len=2 must be even and >= 4"),
        ({"vocab_size": 4}, r"vocab_size=4 must be >= 5"),
        ({"vocab_size": 4, "seq_len": 3}, r"seq_len=3 .*; vocab_size=4"),
        ({"vocab_size": 0}, r"vocab_size=0: .*greater than 0"),
        ({"num_train": 0}, r"num_train=0: .*greater than 0"),
        ({"seed": -1}, r"seed=-1: .*allowed: int >= 0"),
        ({"seq_len": 42.0}, r"seq_len=42\.0: Input should be a valid integer"),
        ({"num_keys": 2}, r"unknown parameter 'num_keys'"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_values(params, message):
    with pytest.raises(TaskParameterError, match=message):
        AssociativeRecall(**params)


# ---------------------------------------------------------------------------------------------------------
# Metric, shortcuts, interface


def test_a_reader_of_the_context_scores_one_and_the_score_is_exact_recall():
    task = AssociativeRecall(num_test=300)
    inputs, labels = task.batch("test", range(300))
    recalled = []
    for row in inputs.tolist():
        pairs = dict(zip(row[0:-2:2], row[1:-2:2], strict=True))
        recalled.append(pairs[row[-1]])
    mask = labels != IGNORE_INDEX
    example_index = torch.nonzero(mask)[:, 0]
    assert torch.equal(task.score(torch.tensor(recalled), labels[mask], example_index, 300), torch.ones(300))
    wrong = torch.tensor(recalled)
    wrong[:100] = 0
    assert float(task.score(wrong, labels[mask], example_index, 300).mean()) == pytest.approx(2 / 3)


def test_no_shortcut_from_label_frequencies_or_positions():
    task = AssociativeRecall(num_train=4000, num_test=4000)
    chance = 1 / task.num_values
    sigma = math.sqrt(chance * (1 - chance) / 4000)  # one supervised position per example
    accuracies = shortcut_accuracies(task, num_fit=4000, num_eval=4000)
    for name, accuracy in accuracies.items():
        assert accuracy <= chance + 3 * sigma, (name, accuracy, chance, sigma)


def test_protocol_description_and_registry():
    task = build_task("associative_recall", vocab_size=30, seq_len=64, seed=3)
    assert isinstance(task, Task)
    assert (task.name, task.metric_name, task.higher_is_better) == ("associative_recall", "accuracy", True)
    description = json.loads(json.dumps(task.describe()))
    assert description == {
        "name": "associative_recall", "vocab_size": 30, "seq_len": 64, "num_train": 5000, "num_test": 500, "seed": 3
    }
    rebuilt = build_task(**description)
    assert torch.equal(rebuilt.batch("train", [4])[0], task.batch("train", [4])[0])
    assert available_tasks()["associative_recall"].startswith("Single-query associative recall")
