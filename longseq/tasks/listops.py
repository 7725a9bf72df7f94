"""ListOps (Long Range Arena): LRA's generator of nested list-operation expressions, one example per index.

The algorithm is LRA's ``lra_benchmarks/data/listops.py`` (spec ``tasks.md`` §1a, "ListOps generator"):

- A tree is drawn by ``gen(depth)``, the root at depth 1. At ``depth < max_depth`` a node is an operator with
  probability ``VALUE_P = 0.25``, else a leaf; at ``depth == max_depth`` it is always a leaf. A leaf is a uniform
  digit 0..9. An operator takes ``k = randint(2, max_args)`` arguments (both ends included), each drawn by
  ``gen(depth + 1)``, and is uniform over ``[MIN [MAX [MED [SM`` (LRA's FIRST and LAST are disabled there too).
- The length is 1 for a leaf and 2 plus the arguments' lengths for an operator (its token and its ``]``). A tree
  is kept only if ``min_length < length < max_length`` (both strict: 501..1999 at the defaults); others are
  redrawn.
- The label evaluates the tree: MIN, MAX; MED is ``int(numpy.median(args))``, the mean of the two middle values
  truncated (a floor, as the values are >= 0) for an even count, e.g. MED(2, 5) = 3; SM is ``sum(args) % 10``.
- The tokens are LRA's after its tokenization (``lra_source`` writes the TSV ``Source`` column, nested pairs in
  parentheses; ``lra_tokenize`` applies LRA's input pipeline: drop ``(`` ``)``, ``]`` -> ``X``, split on spaces):
  the prefix expression with ``X`` closing each operator, e.g. ``[MAX 2 9 [MIN 4 7 X 0 X`` (value 9, 9 tokens;
  the token count always equals the tree's length).

Vocabulary (``SYMBOLS``, ``VOCAB_SIZE = 16``): id 0 is padding (LRA right-pads to ``max_length`` with 0), the
digit ``d`` is id ``d + 1`` (1..10), ``[MIN [MAX [MED [SM`` are 11..14, ``X`` is 15. LRA's ``TokenTextEncoder``
also reserves 0 for padding but numbers the 15 symbols 1..15 in the order of a Python ``set`` (hash-randomised per
process) and adds an unused out-of-vocabulary id 16; any fixed bijection is equivalent for a model that embeds ids.

Differences from the original, none of which changes the distribution of an example:

- **Seeding and splits.** The original is unseeded (Python ``random``), collects trees in a ``set`` until it has
  100k, and splits them by the set's iteration order (96k train / 2k val / 2k test). Here example ``i`` of split
  ``s`` is a pure function of ``(seed, s, i)`` and the parameters (``base.example_rng``): the split comes from the
  split id mixed into the seed, not from an order, and the splits are independent samples.
- **No deduplication.** A per-index generator cannot deduplicate cheaply, and need not: given its shape, a tree's
  leaves are independent uniform digits, and a tree of length ``L`` has at least ``(L + 2) / 3`` leaves (with ``I``
  operators, ``L = 2I + leaves`` and ``leaves >= I + 1``), so two accepted trees coincide with probability at most
  ``10**-168`` at ``min_length = 500``; over the ~5e9 pairs of 100k examples a duplicate has probability below
  ``1e-158``. (The set then makes no difference either: LRA's dataset is, up to that, an i.i.d. sample.) At
  small test lengths duplicates do occur, as they would in an i.i.d. sample.
- **Order of the draws.** ``gen`` draws a node's kind and argument count before its arguments and its operator
  after them; here a first pass draws only the shape (each node's kind and argument count, in the same preorder)
  and, once a shape is accepted, a second pass draws the operators and the digits. All draws are independent and
  the acceptance depends on the shape only, so the accepted trees have the same distribution. One draw gives a
  node's kind and argument count together: ``v`` uniform in ``[0, 4 (max_args - 1))`` makes an operator with
  ``v + 2`` arguments when ``v < max_args - 1``, which has probability exactly ``1/4 = VALUE_P``, and leaves ``v + 2``
  uniform on ``[2, max_args]``. (The original's ``random() <= 0.25`` is ``0.25 + 2**-53``.)
- **Early rejection.** After each operator the length the tree will have at least (every argument not yet drawn a
  leaf) is known; a tree is abandoned as soon as that reaches ``max_length``, since it can only grow. Trees too
  short are rejected without drawing their operators and digits, and only the accepted one is evaluated.

Speed (one core of the development machine, shared with other jobs; defaults): about 12 trees are drawn per
accepted example (``acceptance_probability`` = 8.3%); an example takes 0.9 ms on average (median 0.5 ms, 99th
percentile 5 ms), so a training batch of 32 is generated on the fly in ~30 ms and no disk cache is needed.

``length_distribution`` gives the exact distribution of a drawn tree's length (a dynamic program over depth); the
parameters are refused when no tree fits the length window or when the rejection sampler would need more than
``1 / MIN_ACCEPTANCE`` trees per example.

The registered task ``listops`` (``ListOps``) is a classification task (``tasks/base.py``): ``inputs: (B,
max_length)`` as ``listops_batch`` pads them (``pad_id`` 0, so the model's mask is ``inputs != 0``), ``labels:
(B,)`` the values 0..9 (``num_classes`` 10), metric accuracy. LRA's split sizes are the defaults: 96,000 train and
2,000 test examples, and a validation split (``val``, split id 2) as large as the test split: LRA's 2,000.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, TypeAlias

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from longseq.tasks._generated import GeneratedClassification
from longseq.tasks.base import (
    VAL_SPLITS,
    ExampleIndexError,
    TaskParameterError,
    check_indices,
    check_split,
    example_rng,
    register_task,
)

OPERATORS: tuple[str, ...] = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "X"
VALUE_P = 0.25
"""Probability that a node above ``max_depth`` is an operator (LRA: a leaf when ``random() > VALUE_P``)."""

SYMBOLS: tuple[str, ...] = ("<pad>", *(str(digit) for digit in range(10)), *OPERATORS, CLOSE)
"""Token id -> LRA symbol."""
PAD_ID = 0
FIRST_DIGIT_ID = 1
FIRST_OPERATOR_ID = 11
CLOSE_ID = 15
VOCAB_SIZE = len(SYMBOLS)

MIN_ACCEPTANCE = 1e-4
"""Smallest probability that a drawn tree has an allowed length: below it an example needs over 10^4 trees."""
MAX_LENGTH_LIMIT = 16384
"""Largest ``max_length``: the exact length distribution that validates the parameters costs O(max_length^2)."""

_ID_OF = {symbol: i for i, symbol in enumerate(SYMBOLS)}
# Skeleton placeholders, replaced by drawn operator and digit ids once a shape is accepted.
_OPERATOR_SLOT = -1
_LEAF_SLOT = -2
# Shape draws are taken from the example's generator in chunks of this size; part of the definition of an example.
_DRAW_CHUNK = 1024

Tree: TypeAlias = "int | tuple[str, tuple[Tree, ...]]"
"""A leaf digit 0..9, or ``(operator symbol, arguments)``."""


@dataclass(frozen=True)
class ListOpsParams:
    """The generator's parameters, LRA's defaults; validated on construction (``TaskParameterError``)."""

    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500
    max_length: int = 2000

    def __post_init__(self) -> None:
        problems = []
        for name, low in (("max_depth", 1), ("max_args", 2), ("min_length", 0), ("max_length", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                problems.append(f"{name}={value!r}: allowed an int >= {low}")
            elif value < low:
                problems.append(f"{name}={value}: allowed >= {low}")
        if problems:
            raise TaskParameterError("listops: " + "; ".join(problems))
        if self.max_length > MAX_LENGTH_LIMIT:
            raise TaskParameterError(
                f"listops: max_length={self.max_length}: allowed <= {MAX_LENGTH_LIMIT} (the exact length "
                "distribution that validates the parameters is quadratic in max_length)"
            )
        if self.max_length < self.min_length + 2:
            raise TaskParameterError(
                f"listops: min_length={self.min_length}, max_length={self.max_length}: a kept tree has "
                f"min_length < length < max_length, so allowed max_length >= min_length + 2"
            )
        acceptance = self.acceptance_probability
        window = (
            f"max_depth={self.max_depth}, max_args={self.max_args}, "
            f"min_length={self.min_length}, max_length={self.max_length}"
        )
        if acceptance == 0.0:
            raise TaskParameterError(
                f"listops: {window}: no tree of depth <= max_depth with 2..max_args arguments per operator has "
                f"min_length < length < max_length (the longest possible has {longest_length(self)} tokens); "
                "allowed: a larger max_depth or max_args, or a smaller min_length"
            )
        if acceptance < MIN_ACCEPTANCE:
            raise TaskParameterError(
                f"listops: {window}: a drawn tree has an allowed length with probability {acceptance:.2g}, so an "
                f"example needs ~{1 / acceptance:.2g} trees; allowed: probability >= {MIN_ACCEPTANCE:g} (LRA's "
                "defaults give 0.083; move max_depth towards 10 or widen the length window)"
            )

    @property
    def acceptance_probability(self) -> float:
        """Probability that a drawn tree has ``min_length < length < max_length``."""
        distribution = length_distribution(self.max_depth, self.max_args, self.max_length)
        return float(distribution[self.min_length + 1 :].sum())


def longest_length(params: ListOpsParams) -> int:
    """Length of the largest tree: every node above ``max_depth`` an operator with ``max_args`` arguments."""
    operators = sum(params.max_args**level for level in range(params.max_depth - 1))
    return 1 + operators * (params.max_args + 1)


@functools.lru_cache(maxsize=32)
def length_distribution(max_depth: int, max_args: int, max_length: int) -> np.ndarray:
    """``p: (max_length,)`` float64, ``p[L]`` = probability that ``gen(1)`` draws a tree of length ``L`` (the mass
    of lengths >= max_length is ``1 - p.sum()``). Read-only; exact zeros where no tree has that length.

    Dynamic program over depth: the length distribution ``f`` of a subtree rooted one level higher is
    ``(1 - VALUE_P) x + VALUE_P x^2 mean_k f^k`` (``k`` in ``[2, max_args]``; ``x^2``: the operator and its ``]``),
    from ``f = x`` at ``max_depth``, truncated below ``max_length``. A node at depth ``d`` has ``d - 1`` operator
    ancestors adding at least 3 tokens each, so a tree shorter than ``max_length`` never reaches depth
    ``2 + (max_length - 2) // 3``: deeper limits give the same truncated distribution, and the loop stops there.
    """
    levels = min(max_depth - 1, (max_length - 2) // 3 + 1)
    subtree = np.zeros(2)
    subtree[1] = 1.0
    for _ in range(levels):
        arguments = np.zeros(max_length)
        power = subtree
        for _ in range(2, max_args + 1):
            power = np.convolve(power, subtree)[:max_length]
            arguments[: power.size] += power
        higher = np.zeros(max_length)
        higher[2:] = arguments[:-2] * (VALUE_P / (max_args - 1))
        higher[1] += 1.0 - VALUE_P
        subtree = higher[: np.flatnonzero(higher)[-1] + 1]  # trailing zeros only slow the next convolutions
    distribution = np.zeros(max_length)
    distribution[: subtree.size] = subtree[:max_length]
    distribution.flags.writeable = False
    return distribution


# ----------------------------------------------------------------------------------------------------------
# Trees, symbols and LRA's serialization


def apply_operator(operator: str, values: Sequence[int]) -> int:
    """The value of ``operator`` on its argument values, as LRA's ``to_value`` computes it."""
    if operator == "[MIN":
        return min(values)
    if operator == "[MAX":
        return max(values)
    if operator == "[MED":
        ordered = sorted(values)
        # int(numpy.median): the middle value, or the mean of the two middle ones truncated (values are >= 0).
        return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) // 2
    if operator == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown operator {operator!r}; allowed: {', '.join(OPERATORS)}")


def evaluate(tree: Tree) -> int:
    """The label of ``tree``: its value, 0..9. Recursion depth is the tree's depth (< max_length / 3)."""
    if isinstance(tree, int):
        return tree
    operator, arguments = tree
    return apply_operator(operator, [evaluate(argument) for argument in arguments])


def tree_symbols(tree: Tree) -> list[str]:
    """LRA's tokens of ``tree``: the prefix expression, ``X`` closing each operator."""
    if isinstance(tree, int):
        return [str(tree)]
    operator, arguments = tree
    symbols = [operator]
    for argument in arguments:
        symbols += tree_symbols(argument)
    symbols.append(CLOSE)
    return symbols


def parse_symbols(symbols: Sequence[str]) -> Tree:
    """The tree whose tokens are ``symbols`` (inverse of ``tree_symbols``); ``ValueError`` if malformed."""
    open_operators: list[tuple[str, list[Tree]]] = []
    root: Tree | None = None
    for position, symbol in enumerate(symbols):
        if root is not None:
            raise ValueError(f"token {symbol!r} at position {position} follows the end of the expression")
        node: Tree
        if symbol in OPERATORS:
            open_operators.append((symbol, []))
            continue
        if symbol == CLOSE:
            if not open_operators or not open_operators[-1][1]:
                raise ValueError(f"{CLOSE!r} at position {position} closes no operator with an argument")
            operator, arguments = open_operators.pop()
            node = (operator, tuple(arguments))
        elif len(symbol) == 1 and symbol.isdigit():
            node = int(symbol)
        else:
            raise ValueError(f"unknown token {symbol!r} at position {position}; allowed: {', '.join(SYMBOLS[1:])}")
        if open_operators:
            open_operators[-1][1].append(node)
        else:
            root = node
    if root is None:
        raise ValueError(f"incomplete expression: {len(open_operators)} operator(s) not closed")
    return root


def lra_source(tree: Tree) -> str:
    """LRA's TSV ``Source`` text of ``tree``: the operator paired with its first argument, each later argument
    paired with the running pair, then ``]``, each pair in parentheses: [MAX 2 9] -> ``( ( ( [MAX 2 ) 9 ) ] )``."""
    if isinstance(tree, int):
        return str(tree)
    operator, arguments = tree
    text = f"( {operator} {lra_source(arguments[0])} )"
    for argument in arguments[1:]:
        text = f"( {text} {lra_source(argument)} )"
    return f"( {text} ] )"


def lra_tokenize(source: str) -> list[str]:
    """LRA's input pipeline on a ``Source`` text: ``]`` -> ``X``, parentheses deleted, split on whitespace."""
    return source.replace("]", CLOSE).replace("(", "").replace(")", "").split()


def encode(symbols: Sequence[str]) -> np.ndarray:
    """``(L,) int64`` ids of LRA symbols."""
    return np.array([_ID_OF[symbol] for symbol in symbols], dtype=np.int64)


def decode(ids: np.ndarray | Sequence[int]) -> list[str]:
    """LRA symbols of ids (padding included as ``<pad>``)."""
    return [SYMBOLS[i] for i in np.asarray(ids).tolist()]


# ----------------------------------------------------------------------------------------------------------
# Generation


def _accepted_skeleton(rng: np.random.Generator, params: ListOpsParams) -> list[int]:
    """Token layout of the first drawn tree with an allowed length: ``_OPERATOR_SLOT`` and ``_LEAF_SLOT`` where its
    operators and digits go, ``CLOSE_ID`` for each ``]``. Shapes only: see the module docstring for exactness."""
    operator_draws = params.max_args - 1  # a draw below this is an operator with draw + 2 arguments
    span = operator_draws * round(1 / VALUE_P)  # P(draw < operator_draws) = VALUE_P, exactly as 1 / VALUE_P = 4
    draws: list[int] = []
    used = 0
    while True:
        tokens: list[int] = []
        unstarted: list[int] = []  # per open operator, outermost first: its arguments not yet begun
        length = 1  # the tree's length if every argument not yet drawn is a leaf; a lower bound, exact at the end
        while True:
            if unstarted:
                unstarted[-1] -= 1
            if len(unstarted) + 1 < params.max_depth:
                if used == len(draws):
                    draws = rng.integers(0, span, size=_DRAW_CHUNK).tolist()
                    used = 0
                draw = draws[used]
                used += 1
            else:
                draw = span  # depth == max_depth: a leaf, without a draw (LRA sets r = 1)
            if draw < operator_draws:
                length += draw + 3  # the operator, its ], and draw + 2 arguments of at least one token each
                if length >= params.max_length:
                    break
                tokens.append(_OPERATOR_SLOT)
                unstarted.append(draw + 2)
                continue
            tokens.append(_LEAF_SLOT)
            while unstarted and unstarted[-1] == 0:
                unstarted.pop()
                tokens.append(CLOSE_ID)
            if not unstarted:
                if length > params.min_length:
                    return tokens
                break


def listops_example(seed: int, split: str, index: int, params: ListOpsParams | None = None) -> tuple[np.ndarray, int]:
    """Example ``index`` of ``split``: ``(token_ids: (L,) int64, label: int)`` with ``min_length < L < max_length``
    and label 0..9; a pure function of ``(seed, split, index, params)`` (LRA defaults when ``params`` is None)."""
    params = ListOpsParams() if params is None else params
    split_id = check_split(split, VAL_SPLITS)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TaskParameterError(f"listops: seed={seed!r}: allowed an int >= 0")
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
        raise ExampleIndexError(f"listops: index={index!r}: allowed an int >= 0")
    rng = example_rng(int(seed), split_id, int(index))
    ids = np.array(_accepted_skeleton(rng, params), dtype=np.int64)
    operators = ids == _OPERATOR_SLOT
    leaves = ids == _LEAF_SLOT
    ids[operators] = FIRST_OPERATOR_ID + rng.integers(0, len(OPERATORS), size=int(operators.sum()))
    ids[leaves] = FIRST_DIGIT_ID + rng.integers(0, 10, size=int(leaves.sum()))
    return ids, evaluate(parse_symbols(decode(ids)))


def listops_batch(
    seed: int, split: str, indices: Sequence[int] | np.ndarray, params: ListOpsParams | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``ids: (B, max_length) int64`` right-padded with ``PAD_ID`` (as LRA pads to ``max_length``), ``mask:
    (B, max_length) bool`` (True on tokens) and ``labels: (B,) int64`` of examples ``indices`` of ``split``."""
    params = ListOpsParams() if params is None else params
    rows = np.asarray(indices)
    if rows.ndim != 1:
        raise ExampleIndexError(f"listops: indices must be 1-D, got shape {rows.shape}")
    ids = torch.full((rows.size, params.max_length), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((rows.size, params.max_length), dtype=torch.bool)
    labels = torch.empty(rows.size, dtype=torch.int64)
    for row, index in enumerate(rows.tolist()):
        tokens, labels[row] = listops_example(seed, split, index, params)
        ids[row, : tokens.size] = torch.from_numpy(tokens)
        mask[row, : tokens.size] = True
    return ids, mask, labels


# ----------------------------------------------------------------------------------------------------------
# The task

PositiveInt = Annotated[int, Field(gt=0)]


@register_task("listops")
class ListOps(GeneratedClassification):
    """LRA ListOps: the value (0-9) of a nested MIN/MAX/MED/SM expression, one label per sequence.

    Parameters: the generator's (``ListOpsParams``: ``max_depth``, ``max_args``, ``min_length``, ``max_length``;
    LRA's defaults 10, 10, 500, 2000), the split sizes (LRA's 96,000 train and 2,000 test; ``val`` has
    ``num_test`` examples, LRA's 2,000) and the seed. Rows are right-padded with ``pad_id`` 0 to
    ``seq_len = max_length``.
    """

    name = "listops"
    vocab_size = VOCAB_SIZE
    num_classes = 10
    pad_id = PAD_ID

    def __init__(
        self,
        *,
        max_depth: PositiveInt = 10,
        max_args: PositiveInt = 10,
        min_length: Annotated[int, Field(ge=0)] = 500,
        max_length: PositiveInt = 2000,
        num_train: PositiveInt = 96_000,
        num_test: PositiveInt = 2_000,
        seed: Annotated[int, Field(ge=0)] = 0,
    ) -> None:
        try:
            self.params = ListOpsParams(max_depth=max_depth, max_args=max_args, min_length=min_length,
                                        max_length=max_length)
        except TaskParameterError as error:  # the same wording as the other tasks' refusals
            raise TaskParameterError(f"task 'listops': {str(error).removeprefix('listops: ')}") from None
        self.max_depth, self.max_args, self.min_length, self.max_length = max_depth, max_args, min_length, max_length
        self.seq_len = max_length
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, max_length) int64`` right-padded with 0 and ``labels: (B,) int64`` in 0..9."""
        rows = check_indices(split, indices, self.num_examples(split))
        inputs, _, labels = listops_batch(self.seed, split, rows, self.params)
        return inputs, labels
