"""Single-query associative recall, as in H3 / Hyena (safari ``src/dataloaders/synthetics.py``,
``generate_assoc_recall`` with ``num_keys=1, allow_dot=False``).

Layout of one example, with ``V = vocab_size``, ``L = seq_len``, ``N = L/2 - 1`` pairs (V=10, L=8, N=3)::

    inputs:  3    7    1    6    3    7    0    3
    labels: -100 -100 -100 -100 -100 -100 -100  7
             k    v    k    v    k    v    =>   k

- Token 0 is the query marker ``=>``. Keys are the ``K = (V-1)//2`` tokens ``[1, 1+K)``, values the
  ``V-1-K`` tokens ``[1+K, V)`` (disjoint halves; above K=4 keys 1..4, values 5..9).
- Each example draws its own map key -> value, every key's value uniform over the values *with replacement*
  (two keys may share a value). The context is ``N`` pairs ``k v``; each pair's key is uniform over the keys
  with replacement (a key may recur, always with its own value) and its value is the map's.
- Then ``=>`` and the query key, drawn uniformly among the distinct keys that occur in the context, fill the
  last two positions. The only supervised position is the last one, whose label is the query key's value.
- Metric: per-example accuracy over the supervised positions, i.e. exact recall of the one value.

Differences from safari, by choice:
- **Supervision on the value only, in training too.** Safari trains with a next-token loss on every position and
  scores only the value at test time; here both splits supervise (and score) only the value, so the train curve
  is the test metric. No flag offers the all-token loss: the other positions are random tokens whose loss
  only adds noise.
- Safari reserves two specials (``=>`` and an unused ``.``) and splits its ``V-2`` tokens into halves (sorted as
  strings); here one special and the split above. Safari draws the query uniformly over all keys and re-draws
  it among the present ones when it is absent; here it is uniform over the present keys at once.
- Safari's ``input_seq_len`` (the pair tokens, e.g. 40) is ``seq_len - 2`` here (the model's input length,
  so the defaults ``vocab_size=20, seq_len=42`` are safari's defaults: 20 pairs). Safari also deduplicates its
  train and test sets; examples here are pure functions of ``(seed, split, index)``, so at tiny settings a test
  example may repeat a training one. Safari's multi-key variant (``num_keys > 1``) is not offered.

Hyena's long setting is ``vocab_size=30`` at ``seq_len=131072``; ``seq_len`` may be changed alone to test a
model at other lengths (the same seed rule gives the test examples at each length).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from longseq.tasks._tokens import PositiveInt, Seed, SyntheticTokenTask
from longseq.tasks.base import IGNORE_INDEX, register_task

QUERY = 0
"""The ``=>`` token."""


@register_task("associative_recall")
class AssociativeRecall(SyntheticTokenTask):
    """Single-query associative recall (H3/Hyena): after key-value pairs, recall the value of the queried key."""

    name = "associative_recall"

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 20,
        seq_len: PositiveInt = 42,
        num_train: PositiveInt = 5_000,
        num_test: PositiveInt = 500,
        seed: Seed = 0,
    ) -> None:
        problems = []
        if seq_len % 2 or seq_len < 4:
            problems.append(
                f"seq_len={seq_len} must be even and >= 4 (pairs 'k v', then '=> k': seq_len = 2 * pairs + 2)"
            )
        if vocab_size < 5:
            problems.append(
                f"vocab_size={vocab_size} must be >= 5 (the '=>' token, >= 2 keys and >= 2 values: keys are "
                "[1, 1 + (vocab_size-1)//2), values the rest)"
            )
        self.refuse(problems)
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed
        self.num_pairs = seq_len // 2 - 1
        self.num_keys = (vocab_size - 1) // 2
        self.num_values = vocab_size - 1 - self.num_keys

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, L) int64`` and ``labels: (B, L) int64`` (-100 except the last position)."""
        rows, streams = self.example_rngs(split, indices)
        batch_size, n, num_keys = rows.size, self.num_pairs, self.num_keys
        value_of = np.empty((batch_size, num_keys), dtype=np.int64)
        pair_keys = np.empty((batch_size, n), dtype=np.int64)
        query_uniform = np.empty(batch_size, dtype=np.float64)
        for row, rng in streams:
            value_of[row] = rng.integers(0, self.num_values, size=num_keys)
            pair_keys[row] = rng.integers(0, num_keys, size=n)
            query_uniform[row] = rng.random()

        batch_rows = np.arange(batch_size)[:, None]
        present = np.zeros((batch_size, num_keys), dtype=bool)
        present[batch_rows, pair_keys] = True
        # The j-th present key (in key order) with j uniform over the number of present keys.
        choice = np.floor(query_uniform * present.sum(axis=1)).astype(np.int64)
        query = np.argmax(np.cumsum(present, axis=1) > choice[:, None], axis=1)

        inputs = np.empty((batch_size, self.seq_len), dtype=np.int64)
        inputs[:, 0 : 2 * n : 2] = pair_keys + 1
        inputs[:, 1 : 2 * n : 2] = value_of[batch_rows, pair_keys] + 1 + num_keys
        inputs[:, -2] = QUERY
        inputs[:, -1] = query + 1
        labels = np.full((batch_size, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        labels[:, -1] = value_of[np.arange(batch_size), query] + 1 + num_keys
        return torch.from_numpy(inputs), torch.from_numpy(labels)
