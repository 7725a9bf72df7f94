"""Passkey retrieval: a short key hidden at a chosen depth of irrelevant filler text, asked for at the end.

The prompt of Landmark Attention (Mohtashami & Jaggi 2023) as adapted by Stuffed Mamba (Chen et al. 2024,
``passkey-retrieval/passkey.py``; spec ``tasks.md`` §1c "Passkey retrieval", §1f), over a small word vocabulary
instead of a sub-word tokenizer. One example is the token sequence ``full`` of length ``L + 1``::

    PREFIX | filler[:t] | KEY(d1..dk) | filler[t:F] | QUESTION | d1 .. dk

- ``PREFIX`` (29 tokens): "there is an important info hidden inside a lot of irrelevant text . find it and
  memorize it . i will quiz you about the important information there ."
- ``KEY`` (8 + k tokens): "the pass key is d1 .. dk . remember it ." with the k digits of the key, each uniform
  in 0..9 (a zero-padded k-digit number, as Stuffed Mamba's 00000-99999 for k = 5).
- ``QUESTION`` (6 tokens): "what is the pass key ?", followed by the k answer digits.
- The filler is the Landmark sentence block "the grass is green . the sky is blue . the sun is yellow . here we
  go . there and back again ." (24 tokens) repeated and cut to ``F = L + 1 - 29 - (8 + k) - 6 - k`` tokens.
  The key sentence is inserted after filler token ``t = floor(depth * F + 1/2)``: depth 0 puts it right after
  the prefix, depth 1 right before the question. Like Landmark's character split, ``t`` may fall inside a filler
  sentence. ``depth=None`` draws ``t`` uniformly from ``{0, ..., F}`` per example.
- ``inputs = full[:L]``, ``labels = full[1:]`` at the k positions whose next token is an answer digit (the "?"
  and the first k - 1 answer digits) and -100 elsewhere: the model reads the question and must emit the key;
  the last digit is never an input.

Token ids: digits ``0..9`` are ids 0..9; the words follow in order of first appearance (``WORDS``): 10 there,
11 is, 12 an, 13 important, 14 info, 15 hidden, 16 inside, 17 a, 18 lot, 19 of, 20 irrelevant, 21 text, 22 ".",
23 find, 24 it, 25 and, 26 memorize, 27 i, 28 will, 29 quiz, 30 you, 31 about, 32 the, 33 information, 34 pass,
35 key, 36 remember, 37 what, 38 "?", 39 grass, 40 green, 41 sky, 42 blue, 43 sun, 44 yellow, 45 here, 46 we,
47 go, 48 back, 49 again; ``vocab_size = 50``. Template and filler words overlap ("the", "is", ".", "there",
"and"), as in the English prompt.

Worked example (k = 2, L = 50, so F = 4; key 7 3; depth 0.5 -> t = 2; positions 29.. shown)::

    inputs[29:]:  32 39 | 32 34 35 11  7  3 22 36 24 22 | 11 40 | 37 11 32 34 35 38  7
    labels[29:]:  -100 everywhere except labels[48] = 7 (at "?") and labels[49] = 3 (at the first digit 7)

Metric: **exact match**, as passkey retrieval is scored (the generated key contains the whole key): an example
scores 1 when the predictions at all k supervised positions are right, else 0. Under teacher forcing this is
exactly "greedy decoding reproduces the key". Chance is ``10**-k``.

Each example is a pure function of ``(seed, split, index)`` and the parameters (``base.example_rng``).
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
    register_task,
)

PositiveInt = Annotated[int, Field(gt=0)]

PREFIX_TEXT = (
    "there is an important info hidden inside a lot of irrelevant text . find it and memorize it . "
    "i will quiz you about the important information there ."
)
KEY_HEAD_TEXT = "the pass key is"
KEY_TAIL_TEXT = ". remember it ."
QUESTION_TEXT = "what is the pass key ?"
FILLER_TEXT = "the grass is green . the sky is blue . the sun is yellow . here we go . there and back again ."

NUM_DIGIT_TOKENS = 10


def _word_list() -> tuple[str, ...]:
    words: list[str] = []
    for text in (PREFIX_TEXT, KEY_HEAD_TEXT, KEY_TAIL_TEXT, QUESTION_TEXT, FILLER_TEXT):
        for word in text.split():
            if word not in words:
                words.append(word)
    return tuple(words)


WORDS = _word_list()
"""The word tokens, id ``10 + i`` for ``WORDS[i]`` (digits are ids 0..9)."""
WORD_IDS = {word: NUM_DIGIT_TOKENS + i for i, word in enumerate(WORDS)}
VOCAB_SIZE = NUM_DIGIT_TOKENS + len(WORDS)


def encode(text: str) -> np.ndarray:
    """Token ids of a space-separated text over ``WORDS`` (and single digits)."""
    return np.array([int(w) if w.isdigit() else WORD_IDS[w] for w in text.split()], dtype=np.int64)


PREFIX = encode(PREFIX_TEXT)
KEY_HEAD = encode(KEY_HEAD_TEXT)
KEY_TAIL = encode(KEY_TAIL_TEXT)
QUESTION = encode(QUESTION_TEXT)
FILLER_BLOCK = encode(FILLER_TEXT)


def min_seq_len(num_digits: int) -> int:
    """The shortest ``seq_len`` that holds the template with no filler (``F = 0``)."""
    return len(PREFIX) + len(KEY_HEAD) + num_digits + len(KEY_TAIL) + len(QUESTION) + num_digits - 1


@register_task("passkey")
class Passkey:
    """Passkey retrieval: find a k-digit key hidden at a given depth of repeated filler text."""

    name = "passkey"
    metric_name = "exact_match"
    higher_is_better = True

    def __init__(
        self,
        *,
        seq_len: PositiveInt = 512,
        depth: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None,
        num_digits: Annotated[int, Field(gt=0, le=32)] = 5,
        num_train: PositiveInt = 100_000,
        num_test: PositiveInt = 1_000,
        seed: Annotated[int, Field(ge=0)] = 0,
    ) -> None:
        shortest = min_seq_len(num_digits)
        if seq_len < shortest:
            raise TaskParameterError(
                f"task 'passkey': seq_len={seq_len} is too short for the template with num_digits={num_digits}: "
                f"allowed seq_len >= {shortest} (prefix {len(PREFIX)}, key sentence {8 + num_digits}, question "
                f"{len(QUESTION)} and answer {num_digits} tokens, minus the unshown last digit)"
            )
        self.vocab_size = VOCAB_SIZE
        self.seq_len = seq_len
        self.depth = None if depth is None else float(depth)
        self.num_digits = num_digits
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed
        self.filler_len = seq_len - shortest
        repeats = -(-self.filler_len // len(FILLER_BLOCK)) if self.filler_len else 0
        self.filler = np.tile(FILLER_BLOCK, repeats)[: self.filler_len]
        self.key_sentence_len = len(KEY_HEAD) + num_digits + len(KEY_TAIL)

    def insertion_point(self, depth: float) -> int:
        """Filler tokens before the key sentence at ``depth``: ``floor(depth * F + 1/2)``."""
        return int(np.floor(depth * self.filler_len + 0.5))

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` ("train" or "test")."""
        check_split(split)
        return self.num_train if split == "train" else self.num_test

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, L) int64`` and ``labels: (B, L) int64`` (the answer digits; -100 elsewhere)."""
        split_id = check_split(split)
        rows = check_indices(split, indices, self.num_examples(split))
        batch_size, k, big_f, s = rows.size, self.num_digits, self.filler_len, self.key_sentence_len
        digits = np.empty((batch_size, k), dtype=np.int64)
        offsets = np.empty(batch_size, dtype=np.int64)
        fixed = None if self.depth is None else self.insertion_point(self.depth)
        for row, index in enumerate(rows.tolist()):
            rng = example_rng(self.seed, split_id, index)
            digits[row] = rng.integers(0, NUM_DIGIT_TOKENS, size=k)
            offsets[row] = rng.integers(0, big_f + 1) if fixed is None else fixed

        # The middle region (filler with the key sentence inserted at t), gathered from one table per row:
        # columns [0, F) hold the filler, [F, F + s) the row's key sentence.
        key_sentence = np.concatenate(
            [
                np.broadcast_to(KEY_HEAD, (batch_size, len(KEY_HEAD))),
                digits,
                np.broadcast_to(KEY_TAIL, (batch_size, len(KEY_TAIL))),
            ],
            axis=1,
        )
        table = np.concatenate([np.broadcast_to(self.filler, (batch_size, big_f)), key_sentence], axis=1)
        o = np.arange(big_f + s)[None, :]
        t = offsets[:, None]
        source = np.where(o < t, o, np.where(o < t + s, big_f + o - t, o - s))
        middle = np.take_along_axis(table, source, axis=1)

        full = np.concatenate(
            [
                np.broadcast_to(PREFIX, (batch_size, len(PREFIX))),
                middle,
                np.broadcast_to(QUESTION, (batch_size, len(QUESTION))),
                digits,
            ],
            axis=1,
        )
        inputs = np.ascontiguousarray(full[:, :-1])
        labels = np.full((batch_size, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        labels[:, self.seq_len - k :] = digits
        return torch.from_numpy(inputs), torch.from_numpy(labels)

    def score(self, predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
        """Per-example exact match ``(batch_size,)``: 1 where every answer digit is predicted right, else 0."""
        if not (predictions.shape == targets.shape == example_index.shape) or predictions.ndim != 1:
            raise ValueError(
                "predictions, targets and example_index must be 1-D of one length, got shapes "
                f"{tuple(predictions.shape)}, {tuple(targets.shape)}, {tuple(example_index.shape)}"
            )
        index = example_index.long()
        counts = torch.bincount(index, minlength=batch_size)
        if counts.numel() != batch_size or bool((counts == 0).any()):
            raise ValueError(f"every example of the batch of {batch_size} needs supervised positions")
        wrong = torch.zeros(batch_size, dtype=torch.float32, device=predictions.device)
        wrong.index_add_(0, index, (predictions != targets).to(torch.float32))
        return (wrong == 0).to(torch.float32)

    def describe(self) -> dict[str, Any]:
        """The constructor parameters and ``name``; ``build_task(**task.describe())`` rebuilds this task."""
        return constructor_params(self)
