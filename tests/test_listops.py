"""ListOps generator (LRA, spec tasks.md §1a): determinism, exactness, and LRA's distribution.

The distribution is checked against ``reference_tree``, LRA's recursive ``generate_tree`` written here in the plain
``random`` style, at small lengths where both are cheap; chi-square tests compare lengths, operators, argument
counts and labels, and ``test_wrong_algorithms_are_detected`` shows that the same checks catch a wrong ``VALUE_P``
or a wrong argument-count range.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from longseq.tasks.base import ExampleIndexError, TaskParameterError
from longseq.tasks.listops import (
    CLOSE_ID,
    FIRST_DIGIT_ID,
    FIRST_OPERATOR_ID,
    OPERATORS,
    PAD_ID,
    SYMBOLS,
    VOCAB_SIZE,
    ListOpsParams,
    Tree,
    apply_operator,
    decode,
    encode,
    evaluate,
    length_distribution,
    listops_batch,
    listops_example,
    lra_source,
    lra_tokenize,
    parse_symbols,
    tree_symbols,
)

SMALL = ListOpsParams(max_depth=6, max_args=5, min_length=20, max_length=100)
SMALL_WIDE = ListOpsParams(max_depth=6, max_args=10, min_length=20, max_length=100)
NUM_SAMPLES = 600


# ----------------------------------------------------------------------------------------------------------
# Independent oracles


def stack_value(symbols: Sequence[str]) -> int:
    """A stack machine over LRA's tokens: push operators and digits; at X pop the arguments back to the operator and
    push its value (MED as LRA writes it, ``int(np.median(...))``)."""
    stack: list[str | int] = []
    for symbol in symbols:
        if symbol != "X":
            stack.append(symbol if symbol.startswith("[") else int(symbol))
            continue
        arguments: list[int] = []
        while not isinstance(stack[-1], str):
            arguments.insert(0, int(stack.pop()))
        operator = stack.pop()
        values = {
            "[MIN": lambda a: min(a),
            "[MAX": lambda a: max(a),
            "[MED": lambda a: int(np.median(a)),
            "[SM": lambda a: int(np.sum(a)) % 10,
        }
        stack.append(values[operator](arguments))
    (value,) = stack
    return int(value)


def reference_tree(
    rnd: random.Random, depth: int, params: ListOpsParams, value_p: float = 0.25, max_k: int | None = None
) -> tuple[Tree, int]:
    """LRA's ``generate_tree``: ``(tree, length)``; ``value_p`` and ``max_k`` only to build wrong variants."""
    r = rnd.random() if depth < params.max_depth else 1
    if r > value_p:
        return rnd.choice(range(10)), 1
    length = 2
    arguments = []
    for _ in range(rnd.randint(2, params.max_args if max_k is None else max_k)):
        argument, argument_length = reference_tree(rnd, depth + 1, params, value_p, max_k)
        arguments.append(argument)
        length += argument_length
    return (rnd.choice(OPERATORS), tuple(arguments)), length


def reference_sample(params: ListOpsParams, count: int, seed: int, **variant: float) -> list[Tree]:
    rnd = random.Random(seed)
    trees: list[Tree] = []
    while len(trees) < count:
        tree, length = reference_tree(rnd, 1, params, **variant)
        if params.min_length < length < params.max_length:
            trees.append(tree)
    return trees


def generated_sample(params: ListOpsParams, count: int, seed: int) -> list[Tree]:
    return [parse_symbols(decode(listops_example(seed, "train", i, params)[0])) for i in range(count)]


def statistics(trees: list[Tree]) -> dict[str, list]:
    """Per-tree lengths and labels; per-operator-node operators and argument counts."""
    stats: dict[str, list] = {"length": [], "label": [], "operator": [], "arguments": []}
    for tree in trees:
        stats["length"].append(len(tree_symbols(tree)))
        stats["label"].append(evaluate(tree))
        pending = [tree]
        while pending:
            node = pending.pop()
            if not isinstance(node, int):
                stats["operator"].append(node[0])
                stats["arguments"].append(len(node[1]))
                pending.extend(node[1])
    return stats


def chi_square_p(statistic: float, dof: int) -> float:
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2)))


def two_sample_p(a: Sequence, b: Sequence, min_count: int = 20) -> float:
    """Chi-square p-value that ``a`` and ``b`` come from one distribution; sorted categories are merged with their
    neighbours until each holds ``min_count`` pooled observations."""
    counts_a, counts_b = Counter(a), Counter(b)
    columns: list[list[int]] = []
    current = [0, 0]
    for category in sorted(set(a) | set(b)):
        current = [current[0] + counts_a[category], current[1] + counts_b[category]]
        if sum(current) >= min_count:
            columns.append(current)
            current = [0, 0]
    if columns:
        columns[-1] = [columns[-1][0] + current[0], columns[-1][1] + current[1]]
    table = np.array(columns, dtype=np.float64).T
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return chi_square_p(float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1)


def one_sample_p(values: Sequence[int], probabilities: np.ndarray, min_expected: float = 10.0) -> float:
    """Chi-square p-value of integer ``values`` against ``probabilities[value]`` (normalised), with adjacent values
    merged until each bin expects ``min_expected`` observations."""
    probabilities = probabilities / probabilities.sum()
    observed = np.bincount(values, minlength=probabilities.size)
    bins: list[list[float]] = []
    current = [0.0, 0.0]
    for seen, p in zip(observed, probabilities, strict=True):
        current = [current[0] + seen, current[1] + p * len(values)]
        if current[1] >= min_expected:
            bins.append(current)
            current = [0.0, 0.0]
    bins[-1] = [bins[-1][0] + current[0], bins[-1][1] + current[1]]
    seen_bins, expected = np.array(bins).T
    return chi_square_p(float(((seen_bins - expected) ** 2 / expected).sum()), len(bins) - 1)


def accepted_lengths(params: ListOpsParams) -> np.ndarray:
    """Exact length distribution of an example (unnormalised): the drawn lengths inside the window."""
    distribution = np.array(length_distribution(params.max_depth, params.max_args, params.max_length))
    distribution[: params.min_length + 1] = 0.0
    return distribution


# ----------------------------------------------------------------------------------------------------------
# Vocabulary, trees, evaluation


def test_vocabulary_ids() -> None:
    assert VOCAB_SIZE == len(SYMBOLS) == 16 and SYMBOLS[PAD_ID] == "<pad>" and PAD_ID == 0
    assert [SYMBOLS[FIRST_DIGIT_ID + d] for d in range(10)] == [str(d) for d in range(10)]
    assert [SYMBOLS[FIRST_OPERATOR_ID + k] for k in range(4)] == ["[MIN", "[MAX", "[MED", "[SM"]
    assert SYMBOLS[CLOSE_ID] == "X"
    assert decode(encode(SYMBOLS)) == list(SYMBOLS)


def test_spec_example() -> None:
    symbols = ["[MAX", "2", "9", "[MIN", "4", "7", "X", "0", "X"]
    tree = parse_symbols(symbols)
    assert tree == ("[MAX", (2, 9, ("[MIN", (4, 7)), 0))
    assert evaluate(tree) == stack_value(symbols) == 9
    assert tree_symbols(tree) == symbols
    assert lra_source(("[MAX", (2, 9))) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert lra_tokenize(lra_source(tree)) == symbols


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("[MED", (2, 5), 3),  # the spec's case: mean 3.5, truncated
        ("[MED", (1, 2, 3, 4), 2),
        ("[MED", (9, 9, 8, 8), 8),
        ("[MED", (0, 9), 4),
        ("[MED", (7, 1, 3), 3),
        ("[MED", (6, 6, 0), 6),
        ("[SM", (9, 8, 7), 4),
        ("[SM", (5, 5), 0),
        ("[SM", (3, 0, 0, 0), 3),
        ("[MIN", (4, 7, 2, 9), 2),
        ("[MAX", (4, 7, 2, 9), 9),
    ],
)
def test_operators_on_hand_cases(operator: str, values: tuple[int, ...], expected: int) -> None:
    assert apply_operator(operator, values) == expected
    assert stack_value([operator, *map(str, values), "X"]) == expected


def test_median_is_numpy_median_truncated() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        values = rng.integers(0, 10, size=int(rng.integers(2, 11))).tolist()
        assert apply_operator("[MED", values) == int(np.median(values))


@pytest.mark.parametrize(
    "text",
    ["", "[MIN 1 2", "1 2", "[MIN X", "X", "[MIN 1 X X", "[ABS 1 X", "10", "[MIN 1 2 X 3"],
)
def test_malformed_symbols_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_symbols(text.split())


# ----------------------------------------------------------------------------------------------------------
# Examples: determinism and exactness


def test_examples_are_pure_functions_of_seed_split_index() -> None:
    first = listops_example(3, "train", 7, SMALL)
    again = listops_example(3, "train", 7, SMALL)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    trains = [listops_example(3, "train", i, SMALL)[0].tolist() for i in range(8)]
    tests = [listops_example(3, "test", i, SMALL)[0].tolist() for i in range(8)]
    other_seed = [listops_example(4, "train", i, SMALL)[0].tolist() for i in range(8)]
    assert len({tuple(t) for t in trains + tests + other_seed}) == 24

    ids, _, labels = listops_batch(3, "train", [5, 2, 7], SMALL)
    for row, index in enumerate([5, 2, 7]):
        tokens, label = listops_example(3, "train", index, SMALL)
        assert ids[row, : tokens.size].tolist() == tokens.tolist() and int(labels[row]) == label
    assert torch.equal(ids[2], listops_batch(3, "train", [7], SMALL)[0][0])


@pytest.mark.parametrize(("params", "count"), [(SMALL, 150), (SMALL_WIDE, 150), (ListOpsParams(), 6)])
def test_examples_are_exact(params: ListOpsParams, count: int) -> None:
    for index in range(count):
        ids, label = listops_example(0, "test", index, params)
        assert ids.dtype == np.int64 and ids.ndim == 1
        assert params.min_length < ids.size < params.max_length
        assert int(ids.min()) >= 1 and int(ids.max()) < VOCAB_SIZE
        symbols = decode(ids)
        tree = parse_symbols(symbols)
        assert tree_symbols(tree) == symbols and np.array_equal(encode(tree_symbols(tree)), ids)
        assert lra_tokenize(lra_source(tree)) == symbols
        assert label == evaluate(tree) == stack_value(symbols)
        stack = [(tree, 1)]
        while stack:
            node, depth = stack.pop()
            assert depth <= params.max_depth
            if not isinstance(node, int):
                assert 2 <= len(node[1]) <= params.max_args
                stack.extend((argument, depth + 1) for argument in node[1])


def test_batch_layout() -> None:
    ids, mask, labels = listops_batch(1, "train", np.arange(4), SMALL)
    assert ids.shape == mask.shape == (4, SMALL.max_length) and labels.shape == (4,)
    assert ids.dtype == labels.dtype == torch.int64 and mask.dtype == torch.bool
    assert torch.equal(mask, ids != PAD_ID)
    assert bool((mask.sum(dim=1) > SMALL.min_length).all()) and bool((labels >= 0).all() and (labels <= 9).all())
    for row in range(4):  # right padding: the tokens form a prefix
        assert bool(mask[row, : int(mask[row].sum())].all())


def test_length_bounds_are_strict() -> None:
    params = ListOpsParams(max_depth=6, max_args=5, min_length=20, max_length=30)
    lengths = [listops_example(2, "train", i, params)[0].size for i in range(300)]
    assert min(lengths) == 21 and max(lengths) == 29
    # Lengths 20 and 30 are drawn about as often as each length inside (so ~30 of 300 examples would have one of
    # them if the window included its bounds): they are missing only because the window is strict.
    drawn = length_distribution(params.max_depth, params.max_args, params.max_length + 1)
    assert min(drawn[20], drawn[30]) > 0.5 * drawn[21:30].min()


# ----------------------------------------------------------------------------------------------------------
# The exact length distribution


def test_length_distribution_on_hand_cases() -> None:
    assert length_distribution(1, 10, 50)[1] == 1.0
    two_levels = length_distribution(2, 3, 10)
    assert np.allclose(two_levels, [0, 0.75, 0, 0, 0.125, 0.125, 0, 0, 0, 0])
    binary = length_distribution(5, 2, 200)
    assert binary[np.arange(200) % 3 != 1].sum() == 0.0  # k = 2 only: every operator adds 3 tokens
    assert abs(binary.sum() - 1.0) < 1e-12  # the longest binary tree of depth 5 has 46 tokens
    # Below max_length, limits deeper than 2 + (max_length - 2) // 3 change nothing.
    assert np.array_equal(length_distribution(8, 3, 20), length_distribution(40, 3, 20))


def test_length_distribution_matches_the_reference() -> None:
    trees = reference_sample(SMALL_WIDE, NUM_SAMPLES, seed=11)
    assert one_sample_p(statistics(trees)["length"], accepted_lengths(SMALL_WIDE)) > 1e-3


def test_refusals_of_impossible_and_hopeless_windows() -> None:
    with pytest.raises(TaskParameterError, match=r"longest possible has 4 tokens"):
        ListOpsParams(max_depth=2, max_args=2, min_length=4, max_length=100)
    with pytest.raises(TaskParameterError, match=r"no tree"):  # binary trees have lengths 1 mod 3 only
        ListOpsParams(max_depth=10, max_args=2, min_length=5, max_length=7)
    with pytest.raises(TaskParameterError, match=r"probability .* allowed: probability >= 0.0001"):
        ListOpsParams(max_depth=60)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_args": 1}, r"max_args=1: allowed >= 2"),
        ({"max_depth": 0}, r"max_depth=0: allowed >= 1"),
        ({"min_length": -1}, r"min_length=-1: allowed >= 0"),
        ({"max_length": 10**6}, r"max_length=1000000: allowed <= 16384"),
        ({"max_depth": 3.0}, r"max_depth=3.0: allowed an int >= 1"),
        ({"max_args": True}, r"max_args=True: allowed an int >= 2"),
        ({"min_length": 500, "max_length": 500}, r"allowed max_length >= min_length \+ 2"),
        ({"min_length": 500, "max_length": 501}, r"allowed max_length >= min_length \+ 2"),
    ],
)
def test_invalid_parameters_are_refused(params: dict, message: str) -> None:
    with pytest.raises(TaskParameterError, match=message):
        ListOpsParams(**params)


def test_bad_split_index_and_seed_are_refused() -> None:
    with pytest.raises(ExampleIndexError, match="unknown split"):
        listops_example(0, "validation", 0, SMALL)
    with pytest.raises(ExampleIndexError, match=r"index=-1: allowed an int >= 0"):
        listops_example(0, "train", -1, SMALL)
    with pytest.raises(TaskParameterError, match=r"seed=-2: allowed an int >= 0"):
        listops_example(-2, "train", 0, SMALL)
    with pytest.raises(ExampleIndexError, match="1-D"):
        listops_batch(0, "train", [[0, 1]], SMALL)


# ----------------------------------------------------------------------------------------------------------
# LRA's distribution


@pytest.mark.parametrize("params", [SMALL, SMALL_WIDE])
def test_distribution_matches_the_reference(params: ListOpsParams) -> None:
    ours = statistics(generated_sample(params, NUM_SAMPLES, seed=0))
    reference = statistics(reference_sample(params, NUM_SAMPLES, seed=1))
    p_values = {name: two_sample_p(ours[name], reference[name]) for name in ours}
    assert min(p_values.values()) > 1e-3, p_values
    assert one_sample_p(ours["length"], accepted_lengths(params)) > 1e-3
    # The labels are not uniform (MIN and MAX favour 0 and 9), so they are compared with the reference above.
    pooled = np.bincount(ours["label"] + reference["label"], minlength=10)
    assert one_sample_p(ours["label"] + reference["label"], np.full(10, 0.1)) < 1e-3, pooled


@pytest.mark.parametrize("variant", [{"value_p": 0.5}, {"max_k": SMALL.max_args - 1}])
def test_wrong_algorithms_are_detected(variant: dict) -> None:
    ours = statistics(generated_sample(SMALL, NUM_SAMPLES, seed=0))
    wrong = statistics(reference_sample(SMALL, NUM_SAMPLES, seed=1, **variant))
    p_values = {name: two_sample_p(ours[name], wrong[name]) for name in ours}
    assert min(p_values.values()) < 1e-6, p_values
