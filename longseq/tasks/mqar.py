"""Multi-query associative recall (MQAR), as defined by Zoology (Arora, Eyuboglu et al., ICLR 2024).

Layout of one example, with ``N = num_kv_pairs``, ``C = 2N`` and ``L = seq_len`` (V=12, N=2, L=16)::

    inputs:  2    8    4    7    0    0    4    0    0    0    0    0    2    0    0    0
    labels: -100 -100 -100 -100 -100 -100  7   -100 -100 -100 -100 -100  8   -100 -100 -100
             k1   v1   k2   v2  |<------------------ query region ------------------->|

- Keys are ``N`` distinct tokens from ``[1, V//2)``, values ``N`` distinct tokens from ``[V//2, V)``, paired in
  the order drawn; the context ``k1 v1 ... kN vN`` fills positions ``[0, C)``. Token 0 is filler.
- The query region holds ``space = (L - C) // 2`` slots at even offsets. Key ``k_i`` is queried in slot
  ``gap_i``, i.e. at input position ``C + 2 * gap_i``. The N gaps are distinct, drawn without replacement with
  weights ``p(g) ∝ a (g + 1)^(a - 1)`` (``a = power_a``): for the default ``a = 0.01`` about ``1 / (g + 1)``,
  so queries cluster just after the context; ``a = 1`` is uniform.
- The label at a query key's input position is that key's value; every other label is -100. The value is not
  shown after the query (the next input token is filler), so a model must recall it from the context.
- ``random_non_queries=True`` replaces each filler 0 by a uniform token from ``[0, V)`` (it may be 0 again, or
  collide with a key or value, acting as a distractor). Zoology's ``MQARConfig`` defaults to True; the paper's
  Figure-2 configs use False, which is this task's default.
- Zoology's assertions are enforced: ``seq_len`` even, ``vocab_size > seq_len``, ``4 * num_kv_pairs <= seq_len``.
  (Zoology's own docstring example above, V=12 with L=16, breaks its ``vocab_size > input_seq_len`` assertion;
  here that layout needs ``vocab_size >= 17``.)

Per-example randomness comes from ``SeedSequence([seed, split_id, index])`` (see ``base.example_rng``); the
gaps use the exponential race (the N smallest of ``Exp(1) / p(g)``, in increasing order), which draws the same
ordered sample as sequential weighted sampling without replacement (numpy's ``choice(replace=False, p=p)``) but
vectorises over the batch. Zoology's ``num_passes > 1`` (context repeated, the JRT variant) is not offered.
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


@register_task("mqar")
class MQAR:
    """Zoology multi-query associative recall: recall the value paired with each queried key."""

    name = "mqar"
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 8192,
        seq_len: PositiveInt = 128,
        num_kv_pairs: PositiveInt = 8,
        num_train: PositiveInt = 100_000,
        num_test: PositiveInt = 3_000,
        power_a: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.01,
        random_non_queries: bool = False,
        seed: Annotated[int, Field(ge=0)] = 0,
    ) -> None:
        problems = []
        if seq_len % 2:
            problems.append(f"seq_len={seq_len} must be even")
        if 4 * num_kv_pairs > seq_len:
            problems.append(
                f"4*num_kv_pairs > seq_len ({4 * num_kv_pairs} > {seq_len}): the context takes 2*num_kv_pairs "
                "tokens and the query region needs one even slot per key"
            )
        if vocab_size <= seq_len:
            problems.append(f"vocab_size={vocab_size} must be greater than seq_len={seq_len}")
        num_keys = vocab_size // 2 - 1
        if num_kv_pairs > num_keys:
            problems.append(
                f"num_kv_pairs={num_kv_pairs} > vocab_size/2 - 1 = {num_keys}: too few keys "
                f"(keys are the distinct tokens in [1, {vocab_size // 2}))"
            )
        if problems:
            raise TaskParameterError("task 'mqar': " + "; ".join(problems))

        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_kv_pairs = num_kv_pairs
        self.num_train = num_train
        self.num_test = num_test
        self.power_a = power_a
        self.random_non_queries = random_non_queries
        self.seed = seed

        self.context_len = 2 * num_kv_pairs
        self.num_query_slots = (seq_len - self.context_len) // 2
        slots = np.arange(1, self.num_query_slots + 1, dtype=np.float64)
        weights = power_a * slots ** (power_a - 1)
        self.gap_probabilities = weights / weights.sum()

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` ("train" or "test")."""
        check_split(split)
        return self.num_train if split == "train" else self.num_test

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, L) int64`` and ``labels: (B, L) int64`` (-100 off the query positions)."""
        split_id = check_split(split)
        rows = check_indices(split, indices, self.num_examples(split))
        batch_size, n, length = rows.size, self.num_kv_pairs, self.seq_len
        half = self.vocab_size // 2

        keys = np.empty((batch_size, n), dtype=np.int64)
        values = np.empty((batch_size, n), dtype=np.int64)
        gap_uniforms = np.empty((batch_size, self.num_query_slots), dtype=np.float64)
        noise = np.empty((batch_size, length), dtype=np.int64) if self.random_non_queries else None
        for row, index in enumerate(rows.tolist()):
            rng = example_rng(self.seed, split_id, index)
            keys[row] = rng.choice(half - 1, size=n, replace=False)
            values[row] = rng.choice(self.vocab_size - half, size=n, replace=False)
            gap_uniforms[row] = rng.random(self.num_query_slots)
            if noise is not None:
                noise[row] = rng.integers(0, self.vocab_size, size=length)
        keys += 1
        values += half

        # Exponential race: slot g finishes at Exp(1) / p(g); the first n finishers, in finishing order, are
        # a weighted sample without replacement in draw order. -log1p(-u) is Exp(1) and finite for u in [0, 1).
        finish_times = -np.log1p(-gap_uniforms) / self.gap_probabilities
        gaps = np.argsort(finish_times, axis=1, kind="stable")[:, :n]

        inputs = np.zeros((batch_size, length), dtype=np.int64)
        inputs[:, 0 : self.context_len : 2] = keys
        inputs[:, 1 : self.context_len : 2] = values
        query_positions = self.context_len + 2 * gaps
        batch_rows = np.arange(batch_size)[:, None]
        inputs[batch_rows, query_positions] = keys
        labels = np.full((batch_size, length), IGNORE_INDEX, dtype=np.int64)
        labels[batch_rows, query_positions] = values
        if noise is not None:
            filler = inputs == 0
            inputs[filler] = noise[filler]
        return torch.from_numpy(inputs), torch.from_numpy(labels)

    def score(self, predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
        """Per-example accuracy ``(batch_size,)`` over the supervised (query) positions, as Zoology computes it."""
        return per_example_accuracy(predictions, targets, example_index, batch_size)

    def describe(self) -> dict[str, Any]:
        """The constructor parameters and ``name``; ``build_task(**task.describe())`` rebuilds this task."""
        return constructor_params(self)


# ----------------------------------------------------------------------------------------------------------
# Zoology's training mixture and length-extrapolation test sets

ZOOLOGY_TRAIN_MIXTURE: tuple[tuple[int, int, int], ...] = (
    (64, 4, 100_000),
    (128, 8, 20_000),
    (256, 16, 20_000),
    (256, 32, 20_000),
    (256, 64, 20_000),
)
"""``(seq_len, num_kv_pairs, num_examples)`` of Zoology's MQAR training mixture (``original_mqar_configs.py``,
``arxiv24_based_figure2/configs.py``; ``tasks.md`` §1b)."""

ZOOLOGY_TEST_SETS: tuple[tuple[int, int, int], ...] = (
    (64, 4, 1_000),
    (64, 8, 1_000),
    (64, 16, 1_000),
    (128, 32, 1_000),
    (256, 64, 1_000),
    (512, 128, 1_000),
    (1024, 256, 1_000),
)
"""``(seq_len, num_kv_pairs, num_examples)`` of Zoology's test sets: more pairs than seen in training, and
lengths up to 4x the longest training length (length extrapolation)."""

MixtureConfigs = Annotated[list[list[int]], Field(min_length=1)]


@register_task("mqar_mixture")
class MQARMixture:
    """Zoology's MQAR training mixture of (seq_len, num_kv_pairs) configs, tested on longer sequences.

    Zoology (``zoology/data/utils.py``) trains MQAR on a list of data segments, each an ``MQAR`` dataset of its
    own ``(seq_len, num_kv_pairs, num_examples)``, and tests on another list (``ZOOLOGY_TRAIN_MIXTURE``,
    ``ZOOLOGY_TEST_SETS``: train (64, 4) x 100k, (128, 8), (256, 16), (256, 32), (256, 64) x 20k; test at
    (64, 4/8/16), (128, 32), (256, 64), (512, 128), (1024, 256) x 1k, so up to 4x the longest training length
    and 4x the most pairs). Why a mixture: Zoology's authors report that all models struggle to generalise when
    trained only on very long sequences, and that mixing long and short sequences in training is what lets
    them generalise to longer ones (HazyResearch/zoology issue #24; issue #27 confirms that the Based paper's
    Figure 2, "trained on 256 and evaluated on 1024", used this mixture up to 256 and test sets up to 1024).
    (The issue gives no mechanism; a plausible one, not verified here, is that the short few-pair segments,
    over half the examples, give an easy signal to learn the lookup from.)

    Layout: example ``i`` of a split belongs to segment ``j`` when ``offset_j <= i < offset_j + count_j``
    (segments in the order given, ``offset_j`` the sum of the earlier counts); it is example ``i - offset_j``
    of the same split of ``component(split, j)``, a plain ``mqar`` task with that segment's ``seq_len``,
    ``num_kv_pairs``, the shared ``vocab_size``, ``power_a``, ``random_non_queries`` and a seed derived from
    ``(seed, split, j)`` — exactly that example, right-padded to this task's ``seq_len``, the longest length
    of both lists, with pad token 0 (Zoology's filler) and label -100. Worked example (vocab 17; segments
    (8, 2) and (16, 2) -> seq_len 16; zero filler)::

        segment (8, 2):   inputs 1 15 5 11 1 0 5 0 | 0 0 0 0 0 0 0 0    labels 15 at 4, 11 at 6, -100 elsewhere
        segment (16, 2):  the mqar layout of length 16, unpadded

    Zoology never puts two segments in one batch (each batch holds one segment, no padding); the ``Task``
    protocol asks for one width per batch, so rows are padded instead, which is exact for causal models: a
    row's outputs at its own positions do not depend on the padding after it, and padded positions carry no
    loss. (Non-causal mixers would see the padding.) The cost is the padded compute: training rows are as wide
    as the longest *test* length, so pass shorter ``test_configs`` for a cheap run.

    The test split's mean is over all test segments (each weighted by its count); ``slices(split)`` gives each
    segment's ``(seq_len, num_kv_pairs)`` and index range, and ``test_tasks()`` the per-length ``mqar`` tasks
    whose test examples are this task's test examples unpadded, for per-length scores. Metric: per-example
    accuracy over the query positions (as ``mqar``). ``random_non_queries`` defaults to True here, as in
    Zoology's ``MQARConfig`` which these configs use (the ``mqar`` task follows the Zoology paper's Figure-2
    configs, which set it False).
    """

    name = "mqar_mixture"
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 8192,
        train_configs: MixtureConfigs = [list(c) for c in ZOOLOGY_TRAIN_MIXTURE],  # noqa: B006 (copied below)
        test_configs: MixtureConfigs = [list(c) for c in ZOOLOGY_TEST_SETS],  # noqa: B006 (copied below)
        power_a: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.01,
        random_non_queries: bool = True,
        seed: Annotated[int, Field(ge=0)] = 0,
    ) -> None:
        problems = []
        for label, configs in (("train_configs", train_configs), ("test_configs", test_configs)):
            for j, config in enumerate(configs):
                if len(config) != 3 or any(v <= 0 for v in config):
                    problems.append(
                        f"{label}[{j}]={config}: allowed [seq_len, num_kv_pairs, num_examples], positive integers"
                    )
                    continue
                try:
                    MQAR(vocab_size=vocab_size, seq_len=config[0], num_kv_pairs=config[1])
                except TaskParameterError as error:
                    problems.append(f"{label}[{j}]={config}: {str(error).removeprefix('task ' + repr('mqar') + ': ')}")
        if problems:
            raise TaskParameterError("task 'mqar_mixture': " + "; ".join(problems))

        self.vocab_size = vocab_size
        self.train_configs = [list(c) for c in train_configs]
        self.test_configs = [list(c) for c in test_configs]
        self.power_a = power_a
        self.random_non_queries = random_non_queries
        self.seed = seed
        self.seq_len = max(c[0] for c in self.train_configs + self.test_configs)
        self._configs = {"train": self.train_configs, "test": self.test_configs}
        self._offsets = {
            split: np.concatenate([[0], np.cumsum([c[2] for c in configs])]).astype(np.int64)
            for split, configs in self._configs.items()
        }

    def component(self, split: str, segment: int) -> MQAR:
        """The ``mqar`` task whose ``split`` examples are segment ``segment`` of this task's ``split``, unpadded."""
        split_id = check_split(split)
        seq_len, num_kv_pairs, count = self._configs[split][segment]
        sub_seed = int(np.random.SeedSequence([self.seed, split_id, segment]).generate_state(1)[0])
        return MQAR(
            vocab_size=self.vocab_size,
            seq_len=seq_len,
            num_kv_pairs=num_kv_pairs,
            num_train=count,
            num_test=count,
            power_a=self.power_a,
            random_non_queries=self.random_non_queries,
            seed=sub_seed,
        )

    def test_tasks(self) -> list[MQAR]:
        """One ``mqar`` task per test segment; its test split is that segment of this task's test split."""
        return [self.component("test", j) for j in range(len(self.test_configs))]

    def slices(self, split: str) -> list[tuple[int, int, range]]:
        """``(seq_len, num_kv_pairs, indices)`` of each segment of ``split``, in order."""
        check_split(split)
        offsets = self._offsets[split]
        return [(c[0], c[1], range(int(offsets[j]), int(offsets[j + 1]))) for j, c in enumerate(self._configs[split])]

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split``: the sum of its segments' counts."""
        check_split(split)
        return int(self._offsets[split][-1])

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, seq_len) int64`` (right-padded with 0) and ``labels`` (-100 off the query positions)."""
        rows = check_indices(split, indices, self.num_examples(split))
        inputs = torch.zeros((rows.size, self.seq_len), dtype=torch.int64)
        labels = torch.full((rows.size, self.seq_len), IGNORE_INDEX, dtype=torch.int64)
        segments = np.searchsorted(self._offsets[split], rows, side="right") - 1
        for segment in np.unique(segments).tolist():
            where = np.nonzero(segments == segment)[0]
            sub_inputs, sub_labels = self.component(split, segment).batch(
                split, rows[where] - self._offsets[split][segment]
            )
            width = sub_inputs.shape[1]
            inputs[torch.from_numpy(where), :width] = sub_inputs
            labels[torch.from_numpy(where), :width] = sub_labels
        return inputs, labels

    def score(self, predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
        """Per-example accuracy ``(batch_size,)`` over the query positions, as Zoology computes it."""
        return per_example_accuracy(predictions, targets, example_index, batch_size)

    def describe(self) -> dict[str, Any]:
        """The constructor parameters and ``name``; ``build_task(**task.describe())`` rebuilds this task."""
        return constructor_params(self)
