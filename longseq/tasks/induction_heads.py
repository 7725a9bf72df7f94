"""Induction heads, as in H3 and the Mamba paper (safari ``src/dataloaders/synthetics.py``,
``generate_induction_head`` with ``num_triggers=1``).

Layout of one example, with ``V = vocab_size``, ``L = seq_len``, ``k = induction_len`` and ``T = L - k``
(V=6, L=10, k=1, T=9; the trigger drawn at p=2)::

    inputs:  4    2    0    5    1    3    5    2    4    0
    labels: -100 -100 -100 -100 -100 -100 -100 -100 -100  5
                       =>   a                             =>

- Token 0 is the trigger ``=>``; the data tokens are ``[1, V)``. Positions ``[0, T)`` hold uniform data tokens
  except the trigger at ``p``, drawn uniformly in ``[0, T - 1 - k)``; the ``k`` tokens after it are the answer.
- Position ``T`` holds the trigger again (its second and last occurrence). The labels at positions
  ``T .. T+k-1`` are the answer; the inputs after the final trigger are the answer's first ``k-1`` tokens
  (teacher forcing), so with ``k = 1`` the last input is the trigger and the last label the answer.
- Only the answer is supervised, in training too (safari trains with a next-token loss on every position and
  scores the answer only). Metric: per-example accuracy over the ``k`` answer positions.

Settings: H3/safari use vocab 20 and 30 data tokens; the Mamba paper uses vocab 16, trains at length 256 and
tests at 2^6..2^20. This task's defaults are the Mamba paper's (``vocab_size=16, seq_len=256``); a suite tests
extrapolation by building the same task with a larger ``seq_len`` (same seed rule, longer examples). The
distance between the two triggers is uniform over the context, so a longer test length also means longer
recall distances. Safari's ``input_seq_len`` (the data tokens before the appended trigger) is ``T = seq_len - k``
here; safari reserves an unused second special (``.``), so its vocab 16 has 14 data tokens where this one has 15.
Its ``num_triggers > 1`` is not offered; train and test are not deduplicated (pure functions of
``(seed, split, index)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from longseq.tasks._tokens import PositiveInt, Seed, SyntheticTokenTask
from longseq.tasks.base import IGNORE_INDEX, register_task

TRIGGER = 0
"""The ``=>`` token."""


@register_task("induction_heads")
class InductionHeads(SyntheticTokenTask):
    """Induction heads (H3/Mamba): after the trigger's last occurrence, produce the token that followed its first."""

    name = "induction_heads"

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 16,
        seq_len: PositiveInt = 256,
        induction_len: PositiveInt = 1,
        num_train: PositiveInt = 100_000,
        num_test: PositiveInt = 1_000,
        seed: Seed = 0,
    ) -> None:
        problems = []
        if vocab_size < 3:
            problems.append(f"vocab_size={vocab_size} must be >= 3 (the trigger 0 and >= 2 data tokens [1, V))")
        if seq_len < 2 * induction_len + 2:
            problems.append(
                f"seq_len={seq_len} must be >= 2*induction_len + 2 = {2 * induction_len + 2} (the trigger, its "
                f"{induction_len} answer token(s) and one more before the final trigger, then the answer)"
            )
        self.refuse(problems)
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.induction_len = induction_len
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed
        self.context_len = seq_len - induction_len

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, L) int64`` and ``labels: (B, L) int64`` (-100 except the last ``induction_len``)."""
        rows, streams = self.example_rngs(split, indices)
        batch_size, k, context = rows.size, self.induction_len, self.context_len
        inputs = np.empty((batch_size, self.seq_len), dtype=np.int64)
        trigger = np.empty(batch_size, dtype=np.int64)
        for row, rng in streams:
            inputs[row, :context] = rng.integers(1, self.vocab_size, size=context)
            trigger[row] = rng.integers(0, context - 1 - k)

        batch_rows = np.arange(batch_size)[:, None]
        inputs[batch_rows[:, 0], trigger] = TRIGGER
        answer = inputs[batch_rows, trigger[:, None] + 1 + np.arange(k)]
        inputs[:, context] = TRIGGER
        inputs[:, context + 1 :] = answer[:, : k - 1]
        labels = np.full((batch_size, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        labels[:, context:] = answer
        return torch.from_numpy(inputs), torch.from_numpy(labels)
