"""Joint recall (Zhan et al. 2025, "Overcoming Long-Context Limitations of State-Space Models via
Context-Dependent Sparse Attention", arXiv 2507.00449, the HAX paper; its ``scripts/create_dataset.py``, as
summarised in ``tasks.md`` §1c "Joint recall").

The value of a key depends on the context it appears in: a table ``M[c][k]`` of values, shown once per
(context, key), then queried again for every (context, key) in a fresh order. Layout of the token sequence
``seq`` of one example with ``n_c`` contexts and ``n_k`` keys::

    BOS | c k v k v ... (n_c blocks of 1 + 2 n_k) | SEP | c k v k v ... (the same, re-permuted) | PAD ...

- ``M ~ U{0..n_value-1}^(n_c x n_k)``. In each section the contexts come in a random permutation, and inside
  each context block the keys in a random permutation, each followed by ``M[c, k]``; the query section draws
  fresh permutations. Values stay in the query section as inputs (teacher forcing).
- Token ids (``bias = 10``; ids 0-9 are reserved, 0 and 5-9 are never used): 1 BOS, 2 EOS (never emitted),
  3 PAD, 4 SEP; value ``v -> 10 + v``; key ``k -> 10 + n_value + k``; context ``c -> 10 + n_value +
  max_keys + c``. With the defaults: values 10..25, keys 26..41, contexts 42..57, ``vocab_size = 100`` (the
  paper's model vocabulary).
- ``seq`` is padded with PAD to ``2 * max_contexts * (2 * max_keys + 1) + 2`` (1058 by default); its unpadded
  length is ``2 + 2 n_c (1 + 2 n_k)``. As in the paper's training code, ``inputs = seq[:-1]``,
  ``labels = seq[1:]`` kept only where the paper's mask is 1 — at every **key token of the query section**,
  whose next token is that key's value in that context — and -100 elsewhere. So ``seq_len = 1057`` by default
  and each example has ``n_c * n_k`` supervised positions.
- ``(n_c, n_k)`` of example ``i``: the paper's dataset holds every combination of ``n_c in [min_contexts,
  max_contexts]`` and ``n_k in [min_keys, max_keys]`` (144 by default) equally often (10k train, 100 test
  each); here combination ``j = i mod num_combinations`` (``n_c = min_contexts + j // num_keys_range``,
  ``n_k = min_keys + j % num_keys_range``), so the default 1.44M / 14.4K examples match those counts. The paper
  deduplicates sequences across splits; here the splits use independent streams instead (two equal tables
  have probability at most ``16**-25`` per pair).

Worked example (num_values 16, max_contexts = max_keys = 2, so keys 0, 1 -> ids 26, 27, contexts 0, 1 -> ids
28, 29 and ``seq_len = 21``; an example with n_c = 2, n_k = 1, M = [[3], [7]], contexts in the order c1 c0 in
the first section and c0 c1 in the query section)::

    seq:     1 29 26 17 28 26 13  4 28 26 13 29 26 17  3  3  3  3  3  3  3  3
    inputs:  1 29 26 17 28 26 13  4 28 26 13 29 26 17  3  3  3  3  3  3  3
    labels:  -100 everywhere except labels[9] = 13 and labels[12] = 17 (the query-section keys)

Metric: per-example accuracy over the supervised positions, then the mean over examples, as the paper scores
it (``#correct masked / #masked`` per sequence). Chance is ``1 / n_value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from longseq.tasks.base import (
    IGNORE_INDEX,
    TaskParameterError,
    check_indices,
    check_split,
    constructor_params,
    example_rng,
    per_example_accuracy,
    register_task,
)

PositiveInt = Annotated[int, Field(gt=0)]

BOS, EOS, PAD, SEP = 1, 2, 3, 4
BIAS = 10
"""Ids below ``BIAS`` are reserved for the special tokens."""


@register_task("joint_recall")
class JointRecall:
    """HAX joint recall: recall the value of a key within a context, M[context][key], for every pair."""

    name = "joint_recall"
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        *,
        min_contexts: PositiveInt = 5,
        max_contexts: PositiveInt = 16,
        min_keys: PositiveInt = 5,
        max_keys: PositiveInt = 16,
        num_values: Annotated[int, Field(gt=1)] = 16,
        vocab_size: PositiveInt = 100,
        num_train: PositiveInt = 1_440_000,
        num_test: PositiveInt = 14_400,
        seed: Annotated[int, Field(ge=0)] = 0,
    ) -> None:
        problems = []
        if min_contexts > max_contexts:
            problems.append(f"min_contexts={min_contexts} > max_contexts={max_contexts}")
        if min_keys > max_keys:
            problems.append(f"min_keys={min_keys} > max_keys={max_keys}")
        needed = BIAS + num_values + max_keys + max_contexts
        if vocab_size < needed:
            problems.append(
                f"vocab_size={vocab_size} < {needed}: the ids need 10 reserved + num_values={num_values} + "
                f"max_keys={max_keys} + max_contexts={max_contexts} tokens (allowed: vocab_size >= {needed})"
            )
        if problems:
            raise TaskParameterError("task 'joint_recall': " + "; ".join(problems))
        self.min_contexts, self.max_contexts = min_contexts, max_contexts
        self.min_keys, self.max_keys = min_keys, max_keys
        self.num_values = num_values
        self.vocab_size = vocab_size
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed
        self.num_key_counts = max_keys - min_keys + 1
        self.num_combinations = (max_contexts - min_contexts + 1) * self.num_key_counts
        self.seq_len = 2 * max_contexts * (2 * max_keys + 1) + 1
        self.key_offset = BIAS + num_values
        self.context_offset = BIAS + num_values + max_keys

    def sizes(self, index: int) -> tuple[int, int]:
        """``(n_c, n_k)`` of example ``index`` (in either split)."""
        combination = index % self.num_combinations
        return (
            self.min_contexts + combination // self.num_key_counts,
            self.min_keys + combination % self.num_key_counts,
        )

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` ("train" or "test")."""
        check_split(split)
        return self.num_train if split == "train" else self.num_test

    def _section(self, rng: np.random.Generator, table: np.ndarray) -> np.ndarray:
        """One section: ``(n_c, 1 + 2 n_k)`` rows ``c k v k v ...`` in fresh random orders, as token ids."""
        n_c, n_k = table.shape
        contexts = rng.permutation(n_c)
        keys = np.argsort(rng.random((n_c, n_k)), axis=1)
        block = np.empty((n_c, 1 + 2 * n_k), dtype=np.int64)
        block[:, 0] = self.context_offset + contexts
        block[:, 1::2] = self.key_offset + keys
        block[:, 2::2] = BIAS + table[contexts[:, None], keys]
        return block.reshape(-1)

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, L) int64`` and ``labels: (B, L) int64`` (values at query keys; -100 elsewhere)."""
        split_id = check_split(split)
        rows = check_indices(split, indices, self.num_examples(split))
        seq = np.full((rows.size, self.seq_len + 1), PAD, dtype=np.int64)
        labels = np.full((rows.size, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        for row, index in enumerate(rows.tolist()):
            n_c, n_k = self.sizes(index)
            rng = example_rng(self.seed, split_id, index)
            table = rng.integers(0, self.num_values, size=(n_c, n_k))
            section_len = n_c * (1 + 2 * n_k)
            seq[row, 0] = BOS
            seq[row, 1 : 1 + section_len] = self._section(rng, table)
            seq[row, 1 + section_len] = SEP
            start = 2 + section_len
            seq[row, start : start + section_len] = self._section(rng, table)
            # Query keys sit at offsets 1, 3, ..., 2 n_k - 1 of each block of 1 + 2 n_k tokens.
            block_starts = start + (1 + 2 * n_k) * np.arange(n_c)[:, None]
            key_positions = (block_starts + np.arange(1, 2 * n_k, 2)[None, :]).reshape(-1)
            labels[row, key_positions] = seq[row, key_positions + 1]
        return torch.from_numpy(np.ascontiguousarray(seq[:, :-1])), torch.from_numpy(labels)

    def score(self, predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
        """Per-example accuracy ``(batch_size,)`` over the query-key positions, as the paper computes it."""
        return per_example_accuracy(predictions, targets, example_index, batch_size)

    def describe(self) -> dict[str, Any]:
        """The constructor parameters and ``name``; ``build_task(**task.describe())`` rebuilds this task."""
        return constructor_params(self)
