"""Copying memory (Arjovsky et al. 2016; spec §1c)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longseq.tasks.copying as module
from longseq.tasks import IGNORE_INDEX, Task, TaskParameterError, available_tasks, build_task
from longseq.tasks._tokens import docstring_example, shortcut_accuracies
from longseq.tasks.copying import Copying


def layout_problems(inputs: list[int], labels: list[int], vocab_size: int, m: int) -> list[str]:
    """Everything in one example that departs from the documented layout; empty when it is well formed."""
    problems = []
    length, delimiter = len(inputs), vocab_size - 1
    symbols = inputs[:m]
    if not all(1 <= s < delimiter for s in symbols):
        problems.append(f"symbols {symbols} are not in [1, {delimiter})")
    expected = [*symbols, *[0] * (length - 2 * m - 1), delimiter, *[0] * m]
    if inputs != expected:
        problems.append(f"inputs {inputs} are not symbols, blanks, the delimiter, blanks: {expected}")
    if labels != [IGNORE_INDEX] * (length - m) + symbols:
        problems.append(f"labels {labels} are not the symbols on the last {m} positions")
    return problems


def check_batch(task: Copying, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    assert inputs.dtype == labels.dtype == torch.int64
    assert inputs.shape == labels.shape == (inputs.shape[0], task.seq_len)
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist(), strict=True):
        problems = layout_problems(row_inputs, row_labels, task.vocab_size, task.num_tokens)
        assert problems == [], (row_inputs, row_labels, problems)


# ---------------------------------------------------------------------------------------------------------
# Layout


def test_docstring_example_passes_the_layout_check_and_corruptions_fail_it():
    inputs, labels = docstring_example(module.__doc__)
    assert len(inputs) == len(labels) == 10
    assert layout_problems(inputs, labels, 6, 3) == []
    moved_delimiter = [3, 1, 4, 0, 0, 5, 0, 0, 0, 0]
    reversed_copy = [*labels[:-3], 4, 1, 3]
    delimiter_as_symbol = [5, *inputs[1:]]
    assert layout_problems(moved_delimiter, labels, 6, 3)
    assert layout_problems(inputs, reversed_copy, 6, 3)
    assert layout_problems(delimiter_as_symbol, [*labels[:-3], 5, 1, 4], 6, 3)


def test_default_task_is_arjovskys_smallest_delay_and_well_formed():
    task = Copying()
    assert (task.vocab_size, task.seq_len, task.num_tokens, task.delimiter) == (10, 120, 10, 9)
    inputs, labels = task.batch("train", range(100))
    check_batch(task, inputs, labels)
    assert set(inputs[:, :10].flatten().tolist()) == set(range(1, 9))


@settings(max_examples=30, deadline=None)
@given(
    vocab_size=st.integers(4, 30), num_tokens=st.integers(1, 12), extra=st.integers(0, 40), seed=st.integers(0, 2**32)
)
def test_every_valid_combination_gives_a_well_formed_batch(vocab_size, num_tokens, extra, seed):
    task = Copying(vocab_size=vocab_size, seq_len=2 * num_tokens + 1 + extra, num_tokens=num_tokens, seed=seed)
    check_batch(task, *task.batch("test", [0, 3, 999]))


# ---------------------------------------------------------------------------------------------------------
# Determinism, splits and lengths


@pytest.mark.parametrize("factor", [2, 4, 16])
def test_longer_delays_copy_the_same_symbols(factor):
    short, long = Copying(), Copying(seq_len=120 * factor)
    _, short_labels = short.batch("test", range(20))
    long_inputs, long_labels = long.batch("test", range(20))
    check_batch(long, long_inputs, long_labels)
    assert torch.equal(short_labels[:, -10:], long_labels[:, -10:])


# ---------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vocab_size": 3}, r"vocab_size=3 must be >= 4"),
        ({"seq_len": 20}, r"seq_len=20 must be >= 2\*num_tokens \+ 1 = 21"),
        ({"seq_len": 20, "vocab_size": 2}, r"vocab_size=2 must be >= 4 .*; seq_len=20"),
        ({"num_tokens": 0}, r"num_tokens=0: .*greater than 0"),
        ({"num_train": 0}, r"num_train=0: .*greater than 0"),
        ({"seed": -1}, r"seed=-1: .*allowed: int >= 0"),
        ({"seq_len": "120"}, r"seq_len='120': Input should be a valid integer"),
        ({"delay": 100}, r"unknown parameter 'delay'"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_values(params, message):
    with pytest.raises(TaskParameterError, match=message):
        Copying(**params)


# ---------------------------------------------------------------------------------------------------------
# Metric, shortcuts, interface


def test_a_reader_of_the_first_symbols_scores_one_and_partial_copies_score_per_token():
    task = Copying(num_test=50)
    inputs, labels = task.batch("test", range(50))
    mask = labels != IGNORE_INDEX
    example_index = torch.nonzero(mask)[:, 0]
    predictions = inputs[:, :10].flatten()
    assert torch.equal(task.score(predictions, labels[mask], example_index, 50), torch.ones(50))
    half = predictions.view(50, 10).clone()
    half[:, 5:] = 0
    assert torch.allclose(task.score(half.flatten(), labels[mask], example_index, 50), torch.full((50,), 0.5))


def test_no_shortcut_from_label_frequencies_or_positions():
    task = Copying(num_train=3000, num_test=3000)
    chance = 1 / (task.vocab_size - 2)
    sigma = math.sqrt(chance * (1 - chance) / (3000 * task.num_tokens))  # symbols are independent and uniform
    accuracies = shortcut_accuracies(task, num_fit=3000, num_eval=3000)
    for name, accuracy in accuracies.items():
        assert accuracy <= chance + 3 * sigma, (name, accuracy, chance, sigma)


def test_protocol_description_and_registry():
    task = build_task("copying", vocab_size=12, seq_len=64, num_tokens=5, seed=3)
    assert isinstance(task, Task)
    assert (task.name, task.metric_name, task.higher_is_better) == ("copying", "accuracy", True)
    description = json.loads(json.dumps(task.describe()))
    assert description == {
        "name": "copying", "vocab_size": 12, "seq_len": 64, "num_tokens": 5,
        "num_train": 100_000, "num_test": 1000, "seed": 3,
    }
    rebuilt = build_task(**description)
    assert torch.equal(rebuilt.batch("train", [4])[0], task.batch("train", [4])[0])
    assert available_tasks()["copying"].startswith("Copying memory")
