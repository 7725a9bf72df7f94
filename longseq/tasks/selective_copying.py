"""Selective copying, as in the Mamba paper (Gu & Dao 2023, §3.1 and appendix E.1), generated as S4's copying
dataset with ``variable=True`` (``s4/src/dataloaders/datasets/copying.py``).

Layout of one example, with ``V = vocab_size``, ``L = seq_len``, ``M = num_tokens`` and ``C = L - M`` context
slots (V=6, L=12, M=3; the data drawn at positions 1, 4, 5)::

    inputs:  0    3    0    0    1    4    0    0    0    5    5    5
    labels: -100 -100 -100 -100 -100 -100 -100 -100 -100  3    1    4
            |<-------- context: data among noise -------->| markers |

- Token 0 is the noise (blank) token, ``V-1`` the marker, and the data tokens are ``[1, V-1)``.
- The ``M`` data tokens, uniform with replacement, sit at ``M`` distinct positions drawn uniformly among the ``C``
  context slots, in increasing order; every other context slot is noise. Then ``M`` markers fill ``[C, L)``.
- The label at the i-th marker is the i-th data token (in order of position): the model emits the copy *at* the
  markers, as S4's model does. Only the markers are supervised; metric: per-example accuracy over them (the
  Mamba paper's per-token accuracy on the M outputs).

Conventions (the paper leaves them open): ``seq_len`` is the whole input, markers included, so the paper's
Table 1 setting ("sequence length 4096, vocab 16 including the noise token, 16 data tokens to memorize") is
``vocab_size=16, seq_len=4096, num_tokens=16`` (4080 context slots, S4's ``L = 4064`` noise tokens, 14 data
values); S4's ``L = 4096`` would be ``seq_len=4128``. The markers are one token repeated, as in S4. The defaults
keep the paper's vocabulary and 16 tokens and scale the length down 16x for CPU (``seq_len=256``). Changing
``seq_len`` alone gives longer contexts with the same seed rule: a model trained at one length is tested at
2x-16x; the data tokens are the same at every length, their positions are not. Unlike ``copying``, the spacing
varies, so no fixed-delay (time-invariant) filter solves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from longseq.tasks._copy import CopyTask
from longseq.tasks._tokens import PositiveInt, Seed
from longseq.tasks.base import IGNORE_INDEX, register_task

NOISE = 0


@register_task("selective_copying")
class SelectiveCopying(CopyTask):
    """Selective copying (Mamba): reproduce, in order, the M data tokens scattered among noise tokens."""

    name = "selective_copying"
    filler, cue, data = "noise token", "marker", "data tokens"
    seq_len_reason = "the {m} data tokens and at least one noise token in the context, then {m} markers"

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 16,
        seq_len: PositiveInt = 256,
        num_tokens: PositiveInt = 16,
        num_train: PositiveInt = 100_000,
        num_test: PositiveInt = 1_000,
        seed: Seed = 0,
    ) -> None:
        self.set_layout(vocab_size=vocab_size, seq_len=seq_len, num_tokens=num_tokens, num_train=num_train,
                        num_test=num_test, seed=seed)
        self.marker = vocab_size - 1
        self.context_len = seq_len - num_tokens

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, L) int64`` and ``labels: (B, L) int64`` (-100 except the ``num_tokens`` markers)."""
        rows, streams = self.example_rngs(split, indices)
        batch_size, m, context = rows.size, self.num_tokens, self.context_len
        data = np.empty((batch_size, m), dtype=np.int64)
        positions = np.empty((batch_size, m), dtype=np.int64)
        for row, rng in streams:
            data[row] = rng.integers(1, self.marker, size=m)
            positions[row] = rng.choice(context, size=m, replace=False)
        positions.sort(axis=1)
        inputs = np.full((batch_size, self.seq_len), NOISE, dtype=np.int64)
        inputs[np.arange(batch_size)[:, None], positions] = data
        inputs[:, context:] = self.marker
        labels = np.full((batch_size, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        labels[:, context:] = data
        return torch.from_numpy(inputs), torch.from_numpy(labels)
