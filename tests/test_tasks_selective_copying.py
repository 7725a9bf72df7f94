"""Selective copying (the Mamba paper; S4's copying with variable=True; spec §1c)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longseq.tasks.selective_copying as module
from longseq.tasks import IGNORE_INDEX, Task, TaskParameterError, available_tasks, build_task
from longseq.tasks._tokens import docstring_example, shortcut_accuracies
from longseq.tasks.selective_copying import SelectiveCopying


def layout_problems(inputs: list[int], labels: list[int], vocab_size: int, m: int) -> list[str]:
    """Everything in one example that departs from the documented layout; empty when it is well formed."""
    problems = []
    length, marker = len(inputs), vocab_size - 1
    context = length - m
    data = [t for t in inputs[:context] if t != 0]
    if len(data) != m or not all(1 <= t < marker for t in data):
        problems.append(f"context holds {data}, not {m} data tokens in [1, {marker}) among noise 0")
    if inputs[context:] != [marker] * m:
        problems.append(f"the last {m} inputs {inputs[context:]} are not the marker {marker}")
    if labels != [IGNORE_INDEX] * context + data:
        problems.append(f"labels {labels} are not the data tokens {data}, in order, at the markers")
    return problems


def check_batch(task: SelectiveCopying, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    assert inputs.dtype == labels.dtype == torch.int64
    assert inputs.shape == labels.shape == (inputs.shape[0], task.seq_len)
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist(), strict=True):
        problems = layout_problems(row_inputs, row_labels, task.vocab_size, task.num_tokens)
        assert problems == [], (row_inputs, row_labels, problems)


# ---------------------------------------------------------------------------------------------------------
# Layout


def test_docstring_example_passes_the_layout_check_and_corruptions_fail_it():
    inputs, labels = docstring_example(module.__doc__)
    assert len(inputs) == len(labels) == 12
    assert layout_problems(inputs, labels, 6, 3) == []
    out_of_order = [*labels[:-3], 1, 3, 4]
    marker_in_context = [0, 3, 0, 5, 1, 4, 0, 0, 0, 5, 5, 5]
    missing_token = [0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 5, 5]
    assert layout_problems(inputs, out_of_order, 6, 3)
    assert layout_problems(marker_in_context, labels, 6, 3)
    assert layout_problems(missing_token, labels, 6, 3)


def test_default_task_keeps_the_mamba_vocabulary_and_count_at_a_cpu_length():
    task = SelectiveCopying()
    assert (task.vocab_size, task.seq_len, task.num_tokens, task.marker, task.context_len) == (16, 256, 16, 15, 240)
    inputs, labels = task.batch("train", range(100))
    check_batch(task, inputs, labels)
    assert int((labels != IGNORE_INDEX).sum()) == 100 * 16


def test_the_mamba_table1_setting_builds():
    task = SelectiveCopying(vocab_size=16, seq_len=4096, num_tokens=16)
    check_batch(task, *task.batch("test", range(4)))


@settings(max_examples=30, deadline=None)
@given(
    vocab_size=st.integers(4, 30), num_tokens=st.integers(1, 12), extra=st.integers(0, 40), seed=st.integers(0, 2**32)
)
def test_every_valid_combination_gives_a_well_formed_batch(vocab_size, num_tokens, extra, seed):
    task = SelectiveCopying(
        vocab_size=vocab_size, seq_len=2 * num_tokens + 1 + extra, num_tokens=num_tokens, seed=seed
    )
    check_batch(task, *task.batch("test", [0, 3, 999]))


def test_data_positions_are_a_uniform_subset_of_the_context():
    task = SelectiveCopying(vocab_size=16, seq_len=40, num_tokens=4, num_train=10_000)  # 36 context slots
    inputs, _ = task.batch("train", range(10_000))
    occupied = (inputs[:, :36] != 0).float().mean(dim=0)
    assert float((occupied - 4 / 36).abs().max()) < 0.02  # each slot holds data with probability M / C
    assert abs(float((inputs[:, 0] != 0).float().mean()) - 4 / 36) < 0.02  # no gap forced before the first
    # Not the plain copying layout: the data rarely sits in the first M slots.
    assert float((inputs[:, :4] != 0).all(dim=1).float().mean()) < 0.01


# ---------------------------------------------------------------------------------------------------------
# Determinism, splits and lengths


@pytest.mark.parametrize("factor", [2, 4, 16])
def test_longer_contexts_spread_the_same_data_tokens(factor):
    short, long = SelectiveCopying(), SelectiveCopying(seq_len=256 * factor)
    _, short_labels = short.batch("test", range(20))
    long_inputs, long_labels = long.batch("test", range(20))
    check_batch(long, long_inputs, long_labels)
    assert torch.equal(short_labels[:, -16:], long_labels[:, -16:])
    last_data = (long_inputs[:, : long.context_len] != 0).int().cumsum(dim=1).argmax(dim=1)
    assert int(last_data.max()) > 240  # positions use the whole longer context


# ---------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vocab_size": 3}, r"vocab_size=3 must be >= 4"),
        ({"seq_len": 32}, r"seq_len=32 must be >= 2\*num_tokens \+ 1 = 33"),
        ({"seq_len": 10, "num_tokens": 5, "vocab_size": 1}, r"vocab_size=1 must be >= 4 .*; seq_len=10"),
        ({"num_tokens": 0}, r"num_tokens=0: .*greater than 0"),
        ({"num_test": 0}, r"num_test=0: .*greater than 0"),
        ({"seed": -1}, r"seed=-1: .*allowed: int >= 0"),
        ({"seq_len": 256.0}, r"seq_len=256\.0: Input should be a valid integer"),
        ({"variable": True}, r"unknown parameter 'variable'"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_values(params, message):
    with pytest.raises(TaskParameterError, match=message):
        SelectiveCopying(**params)


# ---------------------------------------------------------------------------------------------------------
# Metric, shortcuts, interface


def test_a_reader_of_the_non_noise_tokens_scores_one_and_a_fixed_offset_reader_does_not():
    task = SelectiveCopying(num_test=200)
    inputs, labels = task.batch("test", range(200))
    mask = labels != IGNORE_INDEX
    example_index = torch.nonzero(mask)[:, 0]
    context = inputs[:, : task.context_len]
    selected = torch.cat([row[row != 0] for row in context])
    assert torch.equal(task.score(selected, labels[mask], example_index, 200), torch.ones(200))
    # Copying's solution (the first M positions) is near chance here.
    fixed = task.score(context[:, :16].flatten(), labels[mask], example_index, 200).mean()
    assert float(fixed) < 0.2


def test_no_shortcut_from_label_frequencies_or_positions():
    task = SelectiveCopying(num_train=2000, num_test=2000)
    chance = 1 / (task.vocab_size - 2)
    sigma = math.sqrt(chance * (1 - chance) / (2000 * task.num_tokens))  # data tokens are independent, uniform
    accuracies = shortcut_accuracies(task, num_fit=2000, num_eval=2000)
    for name, accuracy in accuracies.items():
        assert accuracy <= chance + 3 * sigma, (name, accuracy, chance, sigma)


def test_protocol_description_and_registry():
    task = build_task("selective_copying", vocab_size=10, seq_len=64, num_tokens=4, seed=3)
    assert isinstance(task, Task)
    assert (task.name, task.metric_name, task.higher_is_better) == ("selective_copying", "accuracy", True)
    description = json.loads(json.dumps(task.describe()))
    assert description == {
        "name": "selective_copying", "vocab_size": 10, "seq_len": 64, "num_tokens": 4,
        "num_train": 100_000, "num_test": 1000, "seed": 3,
    }
    rebuilt = build_task(**description)
    assert torch.equal(rebuilt.batch("train", [4])[0], task.batch("train", [4])[0])
    assert available_tasks()["selective_copying"].startswith("Selective copying")
