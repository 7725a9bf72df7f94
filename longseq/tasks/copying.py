"""The copying memory task (Arjovsky, Shah & Bengio 2016, after Hochreiter & Schmidhuber 1997).

Layout of one example, with ``V = vocab_size``, ``L = seq_len`` and ``M = num_tokens`` (V=6, L=10, M=3)::

    inputs:  3    1    4    0    0    0    5    0    0    0
    labels: -100 -100 -100 -100 -100 -100 -100  3    1    4
             d1   d2   d3  |<- blanks ->|  :   |<- copy ->|

- Token 0 is the blank, ``V-1`` the delimiter ``:``, and the data symbols are ``[1, V-1)``.
- Positions ``[0, M)`` hold ``M`` data symbols drawn uniformly (with replacement); then ``L - 2M - 1`` blanks;
  the delimiter at ``L - M - 1``; then ``M`` blanks at ``[L - M, L)``, whose labels are the data symbols in order.
  Only those ``M`` positions are supervised. Metric: per-example accuracy over them (per-token copy accuracy).
- Arjovsky et al.'s ``T`` (the delay) is ``L - 2M``: their input of length ``T + 20`` (10 symbols, ``T-1``
  blanks, the delimiter, 10 blanks) with 8 data symbols is ``vocab_size=10, num_tokens=10, seq_len=T+20``.
  The defaults are their smallest delay, ``T = 100``. A memoryless model's best accuracy is
  ``1 / (V - 2)``; their "memoryless" cross-entropy baseline ``M ln(V-2) / (T + 2M)`` averages over all
  positions, whereas only the copied ones are scored here.

S4's copying dataset (``s4/src/dataloaders/datasets/copying.py``, ``variable=False``) is the same task with
``M`` markers ``V-1`` in place of the delimiter and the blanks after it (the model emits the copy *at* the
markers); ``selective_copying`` uses that layout. ``seq_len`` may be changed alone to test at longer delays
(the same seed rule; the symbols to copy do not depend on the length of the blank stretch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from longseq.tasks._copy import CopyTask
from longseq.tasks._tokens import PositiveInt, Seed
from longseq.tasks.base import IGNORE_INDEX, register_task

BLANK = 0


@register_task("copying")
class Copying(CopyTask):
    """Copying memory (Arjovsky et al. 2016): reproduce M symbols after a long blank stretch and a delimiter."""

    name = "copying"
    filler, cue, data = "blank", "delimiter", "data symbols"
    seq_len_reason = "the {m} symbols, the delimiter and {m} output positions"

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 10,
        seq_len: PositiveInt = 120,
        num_tokens: PositiveInt = 10,
        num_train: PositiveInt = 100_000,
        num_test: PositiveInt = 1_000,
        seed: Seed = 0,
    ) -> None:
        self.set_layout(vocab_size=vocab_size, seq_len=seq_len, num_tokens=num_tokens, num_train=num_train,
                        num_test=num_test, seed=seed)
        self.delimiter = vocab_size - 1

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, L) int64`` and ``labels: (B, L) int64`` (-100 except the last ``num_tokens``)."""
        rows, streams = self.example_rngs(split, indices)
        batch_size, m, length = rows.size, self.num_tokens, self.seq_len
        symbols = np.empty((batch_size, m), dtype=np.int64)
        for row, rng in streams:
            symbols[row] = rng.integers(1, self.delimiter, size=m)
        inputs = np.full((batch_size, length), BLANK, dtype=np.int64)
        inputs[:, :m] = symbols
        inputs[:, length - m - 1] = self.delimiter
        labels = np.full((batch_size, length), IGNORE_INDEX, dtype=np.int64)
        labels[:, length - m :] = symbols
        return torch.from_numpy(inputs), torch.from_numpy(labels)
