"""MQAR generator (Zoology, spec §1b), the task interface, and the task registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longseq.tasks import (
    IGNORE_INDEX,
    MQAR,
    ExampleIndexError,
    Task,
    TaskParameterError,
    UnknownTaskError,
    available_tasks,
    build_task,
    register_task,
)
from longseq.tasks.mqar import ZOOLOGY_TEST_SETS, ZOOLOGY_TRAIN_MIXTURE, MQARMixture

# The spec's worked example (V=12, N=2, L=16, zero filler).
SPEC_INPUTS = [2, 8, 4, 7, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0, 0]
SPEC_LABELS = [IGNORE_INDEX] * 16
SPEC_LABELS[6], SPEC_LABELS[12] = 7, 8


def layout_problems(
    inputs: list[int], labels: list[int], vocab_size: int, num_kv_pairs: int, zero_filler: bool = True
) -> list[str]:
    """Everything in one example that departs from the MQAR layout; empty when the example is well formed."""
    problems = []
    length, context_len, half = len(inputs), 2 * num_kv_pairs, vocab_size // 2
    keys, values = inputs[0:context_len:2], inputs[1:context_len:2]
    if not all(1 <= k < half for k in keys) or len(set(keys)) != num_kv_pairs:
        problems.append(f"keys {keys} are not {num_kv_pairs} distinct tokens in [1, {half})")
    if not all(half <= v < vocab_size for v in values) or len(set(values)) != num_kv_pairs:
        problems.append(f"values {values} are not {num_kv_pairs} distinct tokens in [{half}, {vocab_size})")
    value_of = dict(zip(keys, values, strict=True))
    if any(label != IGNORE_INDEX for label in labels[:context_len]):
        problems.append("a context position is supervised")
    supervised = [p for p in range(length) if labels[p] != IGNORE_INDEX]
    queried = [inputs[p] for p in supervised]
    if sorted(queried) != sorted(keys):
        problems.append(f"queried keys {queried} are not each context key once ({keys})")
    for p in supervised:
        if (p - context_len) % 2 or p - context_len >= length - context_len - 1:
            problems.append(f"query at position {p} is not at an even offset of the query region")
        if labels[p] != value_of.get(inputs[p]):
            problems.append(f"label {labels[p]} at position {p} is not the value of key {inputs[p]}")
    for p in range(context_len, length):
        if labels[p] == IGNORE_INDEX and zero_filler and inputs[p] != 0:
            problems.append(f"filler position {p} holds {inputs[p]}, not 0")
        if not 0 <= inputs[p] < vocab_size:
            problems.append(f"token {inputs[p]} at position {p} is outside [0, {vocab_size})")
    return problems


def check_batch(task: MQAR, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    assert inputs.dtype == labels.dtype == torch.int64
    assert inputs.shape == labels.shape == (inputs.shape[0], task.seq_len)
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist(), strict=True):
        problems = layout_problems(
            row_inputs, row_labels, task.vocab_size, task.num_kv_pairs, zero_filler=not task.random_non_queries
        )
        assert problems == [], (row_inputs, row_labels, problems)


def drawn_gaps(task: MQAR, inputs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(B, N): query slot of the i-th context key, i.e. the i-th gap drawn, in each example."""
    query_region = inputs[:, task.context_len :, None]
    context_keys = inputs[:, None, 0 : task.context_len : 2]
    supervised = (labels[:, task.context_len :] != IGNORE_INDEX)[:, :, None]
    hits = (query_region == context_keys) & supervised
    assert bool((hits.sum(dim=1) == 1).all())
    return (hits.int().argmax(dim=1) // 2).numpy()


# ---------------------------------------------------------------------------------------------------------
# Layout


def test_spec_worked_example_passes_the_layout_check_and_corruptions_fail_it():
    assert layout_problems(SPEC_INPUTS, SPEC_LABELS, 12, 2) == []
    wrong_value = list(SPEC_LABELS)
    wrong_value[6] = 8
    odd_offset_inputs, odd_offset_labels = list(SPEC_INPUTS), list(SPEC_LABELS)
    odd_offset_inputs[6], odd_offset_inputs[7] = 0, 4
    odd_offset_labels[6], odd_offset_labels[7] = IGNORE_INDEX, 7
    noisy_filler = list(SPEC_INPUTS)
    noisy_filler[9] = 3
    assert layout_problems(SPEC_INPUTS, wrong_value, 12, 2)
    assert layout_problems(odd_offset_inputs, odd_offset_labels, 12, 2)
    assert layout_problems(noisy_filler, SPEC_LABELS, 12, 2)


def test_spec_example_vocabulary_breaks_zoologys_assertion_and_is_refused():
    with pytest.raises(TaskParameterError, match=r"vocab_size=12 must be greater than seq_len=16"):
        MQAR(vocab_size=12, seq_len=16, num_kv_pairs=2)


def test_smallest_allowed_vocabulary_gives_the_spec_layout():
    task = MQAR(vocab_size=17, seq_len=16, num_kv_pairs=2)
    inputs, labels = task.batch("train", range(300))
    check_batch(task, inputs, labels)
    # Query positions are 4 + 2*gap with gap in [0, 6): every even slot of the query region gets used.
    used = set(torch.nonzero(labels != IGNORE_INDEX)[:, 1].tolist())
    assert used == {4, 6, 8, 10, 12, 14}


def test_default_task_layout_and_shapes():
    task = MQAR()
    inputs, labels = task.batch("test", [0, 1, 2999])
    assert inputs.shape == (3, 128)
    check_batch(task, inputs, labels)
    assert int((labels != IGNORE_INDEX).sum()) == 3 * 8


@settings(max_examples=30, deadline=None)
@given(
    num_kv_pairs=st.integers(1, 8),
    extra_slots=st.integers(0, 20),
    extra_vocab=st.integers(1, 40),
    random_non_queries=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_every_valid_combination_gives_a_well_formed_batch(
    num_kv_pairs, extra_slots, extra_vocab, random_non_queries, seed
):
    seq_len = 4 * num_kv_pairs + 2 * extra_slots
    task = MQAR(
        vocab_size=seq_len + extra_vocab,
        seq_len=seq_len,
        num_kv_pairs=num_kv_pairs,
        random_non_queries=random_non_queries,
        seed=seed,
    )
    inputs, labels = task.batch("train", [0, 7, 99_999])
    check_batch(task, inputs, labels)


# ---------------------------------------------------------------------------------------------------------
# Determinism and splits


def test_examples_do_not_depend_on_batch_composition_or_order():
    task = MQAR(random_non_queries=True)
    inputs, labels = task.batch("train", [5, 3])
    five, three = task.batch("train", [5]), task.batch("train", [3])
    assert torch.equal(inputs, torch.cat([five[0], three[0]]))
    assert torch.equal(labels, torch.cat([five[1], three[1]]))
    rebuilt = MQAR(random_non_queries=True).batch("train", np.array([3, 5, 3]))
    assert torch.equal(rebuilt[0], inputs[[1, 0, 1]])


def test_train_and_test_streams_and_seeds_differ():
    task = MQAR()
    train, test = task.batch("train", range(16)), task.batch("test", range(16))
    other_seed = MQAR(seed=1).batch("train", range(16))
    assert not torch.equal(train[0], test[0])
    assert not torch.equal(train[0], other_seed[0])
    assert not torch.equal(train[0][0], train[0][1])


def test_random_non_queries_only_replaces_filler():
    plain = MQAR(vocab_size=8192, seq_len=64, num_kv_pairs=4)
    noisy = MQAR(vocab_size=8192, seq_len=64, num_kv_pairs=4, random_non_queries=True)
    (plain_inputs, plain_labels), (noisy_inputs, noisy_labels) = (
        plain.batch("train", range(64)),
        noisy.batch("train", range(64)),
    )
    assert torch.equal(plain_labels, noisy_labels)
    filler = plain_inputs == 0
    assert torch.equal(plain_inputs[~filler], noisy_inputs[~filler])
    assert float((noisy_inputs[filler] != 0).float().mean()) > 0.99
    assert int(noisy_inputs.max()) < 8192


def test_gaps_match_numpys_weighted_sampling_without_replacement_in_draw_order():
    task = MQAR(vocab_size=8192, seq_len=256, num_kv_pairs=4, num_test=3000)
    gaps = drawn_gaps(task, *task.batch("test", range(3000)))
    # Oracle: Zoology draws the gaps with numpy's choice(replace=False, p=p); key i takes the i-th gap drawn.
    rng = np.random.default_rng(12345)
    oracle = np.stack(
        [rng.choice(task.num_query_slots, size=4, replace=False, p=task.gap_probabilities) for _ in range(3000)]
    )
    bins = [0, 1, 2, 4, 10, 30, task.num_query_slots]
    for draw in range(4):
        ours = np.histogram(gaps[:, draw], bins)[0] / 3000
        theirs = np.histogram(oracle[:, draw], bins)[0] / 3000
        # Sampling noise gives a total variation of ~0.025; sorting the gaps, or pairing them with keys at
        # random, gives 0.25 or more.
        assert 0.5 * np.abs(ours - theirs).sum() < 0.08, (draw, ours, theirs)
    assert abs(float((gaps[:, 0] == 0).mean()) - task.gap_probabilities[0]) < 0.035
    assert gaps.mean() < 0.5 * (task.num_query_slots - 1) / 2

    uniform = MQAR(vocab_size=8192, seq_len=256, num_kv_pairs=4, power_a=1.0, num_test=3000)
    uniform_gaps = drawn_gaps(uniform, *uniform.batch("test", range(3000)))
    assert abs(uniform_gaps.mean() - (uniform.num_query_slots - 1) / 2) < 3


# ---------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"seq_len": 127, "vocab_size": 8192}, r"seq_len=127 must be even"),
        ({"seq_len": 30, "num_kv_pairs": 8}, r"4\*num_kv_pairs > seq_len \(32 > 30\)"),
        ({"vocab_size": 128, "seq_len": 128}, r"vocab_size=128 must be greater than seq_len=128"),
        ({"vocab_size": 6, "seq_len": 16, "num_kv_pairs": 4}, r"num_kv_pairs=4 > vocab_size/2 - 1 = 2"),
        ({"vocab_size": 0}, r"vocab_size=0: .*greater than 0"),
        ({"num_kv_pairs": -1}, r"num_kv_pairs=-1: .*greater than 0"),
        ({"num_train": 0}, r"num_train=0: .*greater than 0"),
        ({"num_test": 0}, r"num_test=0: .*greater than 0"),
        ({"power_a": 0.0}, r"power_a=0\.0: .*allowed: float > 0"),
        ({"power_a": float("nan")}, r"power_a=nan: .*finite"),
        ({"seed": -3}, r"seed=-3: .*allowed: int >= 0"),
        ({"seq_len": 128.0}, r"seq_len=128\.0: Input should be a valid integer \(allowed: int > 0\)"),
        ({"random_non_queries": 1}, r"random_non_queries=1: .*boolean"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_values(params, message):
    with pytest.raises(TaskParameterError, match=message):
        MQAR(**params)


def test_bad_splits_and_indices_are_refused():
    task = MQAR(num_train=10, num_test=5)
    assert (task.num_examples("train"), task.num_examples("test")) == (10, 5)
    with pytest.raises(ExampleIndexError, match=r"unknown split 'val'; allowed: 'train', 'test'"):
        task.batch("val", [0])
    with pytest.raises(ExampleIndexError, match=r"unknown split 'valid'"):
        task.num_examples("valid")
    with pytest.raises(ExampleIndexError, match=r"index 5 is out of range for split 'test': allowed 0 <= index < 5"):
        task.batch("test", [0, 5])
    with pytest.raises(ExampleIndexError, match=r"index -1 is out of range"):
        task.batch("train", [-1])
    with pytest.raises(ExampleIndexError, match=r"must be 1-D"):
        task.batch("train", [[0, 1]])
    with pytest.raises(ExampleIndexError, match=r"must be integers"):
        task.batch("train", [0.5])
    inputs, labels = task.batch("train", [])
    assert inputs.shape == labels.shape == (0, 128)


# ---------------------------------------------------------------------------------------------------------
# Metric


def test_score_is_per_example_accuracy_over_supervised_positions():
    task = MQAR()
    targets = torch.tensor([10, 11, 12, 13, 20, 21])
    example_index = torch.tensor([0, 0, 0, 0, 2, 1])
    predictions = torch.tensor([10, 0, 12, 13, 20, 5])
    scores = task.score(predictions, targets, example_index, batch_size=3)
    assert torch.allclose(scores, torch.tensor([0.75, 0.0, 1.0]))


def test_score_on_a_generated_batch():
    task = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4)
    _, labels = task.batch("test", range(5))
    supervised = labels != IGNORE_INDEX
    example_index = torch.nonzero(supervised)[:, 0]
    targets = labels[supervised]
    assert torch.equal(task.score(targets, targets, example_index, 5), torch.ones(5))
    predictions = targets.clone()
    predictions[example_index == 3] = 0
    predictions[torch.nonzero(example_index == 1)[0]] = 0
    assert torch.allclose(task.score(predictions, targets, example_index, 5), torch.tensor([1, 0.75, 1, 0, 1]))


def test_score_refuses_inconsistent_inputs():
    task = MQAR()
    one = torch.tensor([1])
    with pytest.raises(ValueError, match=r"examples \[1\] have no supervised positions"):
        task.score(one, one, torch.tensor([0]), batch_size=2)
    with pytest.raises(ValueError, match=r"same length, got 1, 2, 1"):
        task.score(one, torch.tensor([1, 2]), torch.tensor([0]), batch_size=1)
    with pytest.raises(ValueError, match=r"example_index values must lie in \[0, 1\), got range \[0, 3\]"):
        task.score(torch.tensor([1, 1]), torch.tensor([1, 1]), torch.tensor([0, 3]), batch_size=1)
    with pytest.raises(ValueError, match=r"must be 1-D"):
        task.score(one[None], one[None], one[None], batch_size=1)


# ---------------------------------------------------------------------------------------------------------
# Interface and registry


def test_mqar_satisfies_the_task_protocol_and_describes_itself():
    task = build_task("mqar", vocab_size=1024, seq_len=64, num_kv_pairs=4, random_non_queries=True, seed=7)
    assert isinstance(task, Task)
    assert (task.name, task.metric_name, task.higher_is_better) == ("mqar", "accuracy", True)
    description = json.loads(json.dumps(task.describe()))
    rebuilt = build_task(**description)
    assert rebuilt.describe() == description
    assert torch.equal(rebuilt.batch("train", [4])[0], task.batch("train", [4])[0])


def test_registry_lists_and_refuses_clearly():
    assert available_tasks()["mqar"].startswith("Zoology multi-query associative recall")
    with pytest.raises(UnknownTaskError, match=r"unknown task 'mqar2'; available: .*mqar"):
        build_task("mqar2")
    with pytest.raises(TaskParameterError, match=r"unknown parameter\(s\) 'num_pairs'; allowed: vocab_size, "):
        build_task("mqar", num_pairs=4)
    with pytest.raises(TaskParameterError, match=r"vocab_size='8192': Input should be a valid integer"):
        build_task("mqar", vocab_size="8192")
    with pytest.raises(TaskParameterError, match=r"unknown parameter 'seqlen'; allowed: vocab_size, seq_len"):
        MQAR(seqlen=64)


def test_registration_rules():
    with pytest.raises(ValueError, match=r"task 'mqar' is already registered"):
        register_task("mqar")(type("Other", (), {"__doc__": "Another task."}))

    class Undocumented:
        def __init__(self, *, size: int = 1) -> None:
            self.size = size

    with pytest.raises(TypeError, match=r"needs a docstring"):
        register_task("undocumented")(Undocumented)

    class Positional:
        """A task with a positional parameter."""

        def __init__(self, size: int = 1) -> None:
            self.size = size

    with pytest.raises(TypeError, match=r"keyword-only parameters, got \['size'\]"):
        register_task("positional")(Positional)
    assert set(available_tasks()) >= {"mqar"}
    assert not {"undocumented", "positional"} & set(available_tasks())


# ---------------------------------------------------------------------------------------------------------
# Zoology's training mixture and length-extrapolation test sets (spec §1b)


def test_zoology_mixture_and_test_sets_are_the_specs():
    assert [list(c) for c in ZOOLOGY_TRAIN_MIXTURE] == [
        [64, 4, 100_000],
        [128, 8, 20_000],
        [256, 16, 20_000],
        [256, 32, 20_000],
        [256, 64, 20_000],
    ]
    assert [c[:2] for c in ZOOLOGY_TEST_SETS] == [
        (64, 4),
        (64, 8),
        (64, 16),
        (128, 32),
        (256, 64),
        (512, 128),
        (1024, 256),
    ]
    task = MQARMixture()
    assert (task.seq_len, task.num_examples("train"), task.num_examples("test")) == (1024, 180_000, 7_000)
    assert (task.vocab_size, task.random_non_queries) == (8192, True)
    assert [(s[0], s[1], len(s[2])) for s in task.slices("test")] == [tuple(c) for c in ZOOLOGY_TEST_SETS]
    assert task.slices("train")[1][2] == range(100_000, 120_000)


def test_mixture_rows_are_their_segments_examples_right_padded():
    task = MQARMixture(
        vocab_size=300, train_configs=[[16, 2, 5], [64, 8, 4], [32, 4, 3]], test_configs=[[128, 16, 6], [256, 64, 2]]
    )
    assert task.seq_len == 256
    for split in ("train", "test"):
        indices = np.arange(task.num_examples(split))[::-1].copy()
        inputs, labels = task.batch(split, indices)
        assert inputs.shape == labels.shape == (len(indices), 256)
        for row, index in enumerate(indices.tolist()):
            segment = next(j for j, s in enumerate(task.slices(split)) if index in s[2])
            component = task.component(split, segment)
            start = task.slices(split)[segment][2].start
            sub_inputs, sub_labels = component.batch(split, [index - start])
            width = component.seq_len
            assert torch.equal(inputs[row, :width], sub_inputs[0])
            assert torch.equal(labels[row, :width], sub_labels[0])
            assert bool((inputs[row, width:] == 0).all()) and bool((labels[row, width:] == IGNORE_INDEX).all())
            problems = layout_problems(
                sub_inputs[0].tolist(), sub_labels[0].tolist(), 300, component.num_kv_pairs, zero_filler=False
            )
            assert problems == []
    # The per-length test tasks are the test segments, unpadded.
    tasks = task.test_tasks()
    assert [(t.seq_len, t.num_kv_pairs, t.num_test) for t in tasks] == [(128, 16, 6), (256, 64, 2)]
    inputs, _ = task.batch("test", range(6, 8))
    assert torch.equal(inputs, tasks[1].batch("test", [0, 1])[0])


def test_mixture_is_deterministic_and_segments_and_splits_differ():
    task = MQARMixture(vocab_size=128, train_configs=[[32, 4, 50], [32, 4, 50]], test_configs=[[32, 4, 50]])
    inputs, _ = task.batch("train", [70, 3])
    assert torch.equal(inputs, torch.cat([task.batch("train", [70])[0], task.batch("train", [3])[0]]))
    same_config = task.batch("train", range(50))[0], task.batch("train", range(50, 100))[0]
    assert not torch.equal(*same_config)  # two segments of one config draw different examples
    assert not torch.equal(task.batch("test", range(50))[0], same_config[0])
    rebuilt = build_task(**json.loads(json.dumps(task.describe())))
    assert rebuilt.describe() == task.describe()
    assert torch.equal(rebuilt.batch("train", [70])[0], task.batch("train", [70])[0])


def test_mixture_generation_is_fast():
    import time

    task = MQARMixture()
    start = time.perf_counter()
    inputs, _ = task.batch("train", np.arange(0, 180_000, 9))
    assert inputs.shape == (20_000, 1024)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"train_configs": []}, r"train_configs=\[\]: .*at least 1 item"),
        ({"train_configs": [[64, 4]]}, r"train_configs\[0\]=\[64, 4\]: allowed \[seq_len, num_kv_pairs, num_ex"),
        ({"test_configs": [[64, 4, 0]]}, r"test_configs\[0\]=\[64, 4, 0\]: allowed"),
        ({"test_configs": [[64, 32, 10]]}, r"test_configs\[0\]=\[64, 32, 10\]: 4\*num_kv_pairs > seq_len \(128 > 64\)"),
        ({"vocab_size": 512}, r"test_configs\[5\]=\[512, 128, 1000\]: vocab_size=512 must be greater than seq_len=512"),
        ({"train_configs": [[63, 4, 10]]}, r"train_configs\[0\]=\[63, 4, 10\]: seq_len=63 must be even"),
        ({"train_configs": ((64, 4, 10),)}, r"train_configs=.*valid list"),
        ({"power_a": 0.0}, r"power_a=0\.0"),
    ],
)
def test_mixture_refuses_invalid_parameters_naming_the_values(params, message):
    with pytest.raises(TaskParameterError, match=message):
        MQARMixture(**params)


def test_mixture_label_frequency_and_position_predictors_score_at_chance():
    # Values are uniform over vocab_size/2 tokens, so chance is 2/vocab_size per query.
    task = MQARMixture(
        vocab_size=64, train_configs=[[16, 2, 2000], [32, 4, 2000]], test_configs=[[16, 2, 2000], [32, 8, 2000]]
    )
    n = task.num_examples("test")
    _, train_labels = task.batch("train", range(task.num_examples("train")))
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
    p = 2 / task.vocab_size
    per_example = torch.bincount(example_index, minlength=n).double()
    sigma = float((p * (1 - p) / per_example).sum()) ** 0.5 / n
    for predictions in (torch.full_like(targets, most_frequent), per_position[positions]):
        score = float(task.score(predictions, targets, example_index, n).mean())
        assert score <= p + 3 * sigma, (score, p, sigma)
