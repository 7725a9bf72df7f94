"""Induction heads (safari; the H3 and Mamba papers; spec §1c)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longseq.tasks.induction_heads as module
from longseq.tasks import IGNORE_INDEX, Task, TaskParameterError, available_tasks, build_task
from longseq.tasks._tokens import docstring_example, shortcut_accuracies
from longseq.tasks.induction_heads import InductionHeads


def layout_problems(inputs: list[int], labels: list[int], vocab_size: int, k: int) -> list[str]:
    """Everything in one example that departs from the documented layout; empty when it is well formed."""
    problems = []
    length = len(inputs)
    context = length - k
    triggers = [p for p in range(context) if inputs[p] == 0]
    if len(triggers) != 1 or not 0 <= triggers[0] < context - 1 - k:
        problems.append(f"trigger positions {triggers} in the context: want one in [0, {context - 1 - k})")
        return problems
    if not all(1 <= t < vocab_size for p, t in enumerate(inputs[:context]) if p != triggers[0]):
        problems.append(f"context tokens are not in [1, {vocab_size})")
    answer = inputs[triggers[0] + 1 : triggers[0] + 1 + k]
    if inputs[context] != 0:
        problems.append(f"position {context} holds {inputs[context]}, not the trigger")
    if inputs[context + 1 :] != answer[:-1]:
        problems.append(f"inputs after the final trigger {inputs[context + 1:]} are not the answer's start")
    if labels[:context] != [IGNORE_INDEX] * context:
        problems.append("a context position is supervised")
    if labels[context:] != answer:
        problems.append(f"labels {labels[context:]} are not the answer {answer}")
    return problems


def check_batch(task: InductionHeads, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    assert inputs.dtype == labels.dtype == torch.int64
    assert inputs.shape == labels.shape == (inputs.shape[0], task.seq_len)
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist(), strict=True):
        problems = layout_problems(row_inputs, row_labels, task.vocab_size, task.induction_len)
        assert problems == [], (row_inputs, row_labels, problems)


# ---------------------------------------------------------------------------------------------------------
# Layout


def test_docstring_example_passes_the_layout_check_and_corruptions_fail_it():
    inputs, labels = docstring_example(module.__doc__)
    assert len(inputs) == len(labels) == 10
    assert layout_problems(inputs, labels, 6, 1) == []
    wrong_answer = [*labels[:-1], 4]
    two_triggers = list(inputs)
    two_triggers[5] = 0
    late_trigger = [4, 2, 5, 1, 3, 5, 2, 0, 4, 0]  # trigger at T-2: its answer would touch the final trigger
    assert layout_problems(inputs, wrong_answer, 6, 1)
    assert layout_problems(two_triggers, labels, 6, 1)
    assert layout_problems(late_trigger, [*labels[:-1], 4], 6, 1)


def test_default_task_is_the_mamba_setting_and_well_formed():
    task = InductionHeads()
    assert (task.vocab_size, task.seq_len, task.induction_len) == (16, 256, 1)
    inputs, labels = task.batch("train", range(200))
    check_batch(task, inputs, labels)
    assert int((labels != IGNORE_INDEX).sum()) == 200


@settings(max_examples=30, deadline=None)
@given(
    vocab_size=st.integers(3, 30),
    induction_len=st.integers(1, 4),
    extra=st.integers(0, 40),
    seed=st.integers(0, 2**32),
)
def test_every_valid_combination_gives_a_well_formed_batch(vocab_size, induction_len, extra, seed):
    task = InductionHeads(
        vocab_size=vocab_size, seq_len=2 * induction_len + 2 + extra, induction_len=induction_len, seed=seed
    )
    check_batch(task, *task.batch("test", [0, 3, 999]))


def test_trigger_position_is_uniform_over_its_range():
    task = InductionHeads(vocab_size=16, seq_len=12, num_train=20_000)  # T = 11: trigger in [0, 9)
    inputs, _ = task.batch("train", range(20_000))
    trigger = (inputs[:, :11] == 0).int().argmax(dim=1)
    counts = torch.bincount(trigger, minlength=9).float() / 20_000
    assert counts.shape == (9,)
    assert float((counts - 1 / 9).abs().max()) < 0.012


# ---------------------------------------------------------------------------------------------------------
# Determinism, splits and lengths


@pytest.mark.parametrize("factor", [2, 4, 16])
def test_extrapolation_lengths_are_well_formed_and_spread_the_trigger(factor):
    task = InductionHeads(seq_len=256 * factor)
    inputs, labels = task.batch("test", range(50))
    check_batch(task, inputs, labels)
    trigger = (inputs[:, :-1] == 0).int().argmax(dim=1)
    assert int(trigger.max()) > 256 * factor / 2  # the recall distance grows with the test length


# ---------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vocab_size": 2}, r"vocab_size=2 must be >= 3"),
        ({"seq_len": 3}, r"seq_len=3 must be >= 2\*induction_len \+ 2 = 4"),
        ({"seq_len": 9, "induction_len": 4}, r"seq_len=9 must be >= 2\*induction_len \+ 2 = 10"),
        ({"induction_len": 0}, r"induction_len=0: .*greater than 0"),
        ({"num_test": -5}, r"num_test=-5: .*greater than 0"),
        ({"seed": -1}, r"seed=-1: .*allowed: int >= 0"),
        ({"seq_len": True}, r"seq_len=True: Input should be a valid integer"),
        ({"num_triggers": 2}, r"unknown parameter 'num_triggers'"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_values(params, message):
    with pytest.raises(TaskParameterError, match=message):
        InductionHeads(**params)


# ---------------------------------------------------------------------------------------------------------
# Metric, shortcuts, interface


@pytest.mark.parametrize("induction_len", [1, 3])
def test_an_induction_reader_scores_one(induction_len):
    task = InductionHeads(vocab_size=8, seq_len=64, induction_len=induction_len, num_test=200)
    inputs, labels = task.batch("test", range(200))
    predictions = []
    for row in inputs.tolist():
        first = row.index(0)
        predictions.extend(row[first + 1 : first + 1 + induction_len])
    mask = labels != IGNORE_INDEX
    example_index = torch.nonzero(mask)[:, 0]
    scores = task.score(torch.tensor(predictions), labels[mask], example_index, 200)
    assert torch.equal(scores, torch.ones(200))


def test_no_shortcut_from_label_frequencies_or_positions():
    task = InductionHeads(induction_len=2, num_train=4000, num_test=4000)
    chance = 1 / (task.vocab_size - 1)
    sigma = math.sqrt(chance * (1 - chance) / (4000 * 2))  # answer tokens are independent and uniform
    accuracies = shortcut_accuracies(task, num_fit=4000, num_eval=4000)
    for name, accuracy in accuracies.items():
        assert accuracy <= chance + 3 * sigma, (name, accuracy, chance, sigma)


def test_protocol_description_and_registry():
    task = build_task("induction_heads", vocab_size=20, seq_len=30, induction_len=2, seed=3)
    assert isinstance(task, Task)
    assert (task.name, task.metric_name, task.higher_is_better) == ("induction_heads", "accuracy", True)
    description = json.loads(json.dumps(task.describe()))
    assert description == {
        "name": "induction_heads", "vocab_size": 20, "seq_len": 30, "induction_len": 2,
        "num_train": 100_000, "num_test": 1000, "seed": 3,
    }
    rebuilt = build_task(**description)
    assert torch.equal(rebuilt.batch("train", [4])[0], task.batch("train", [4])[0])
    assert available_tasks()["induction_heads"].startswith("Induction heads")
