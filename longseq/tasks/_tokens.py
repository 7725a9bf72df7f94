"""Plumbing shared by the small synthetic token tasks (associative recall, induction heads, copying, selective
copying): the split sizes, the per-example accuracy metric, ``describe()`` from the constructor's signature,
refusals, and the per-example random streams. Registers nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
)

PositiveInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0)]


class SyntheticTokenTask:
    """Base of the token tasks: a subclass sets ``name``, stores every constructor parameter as an attribute of
    the same name, and implements ``batch``. The metric is per-example accuracy over the supervised positions."""

    name: str
    metric_name = "accuracy"
    higher_is_better = True
    num_train: int
    num_test: int
    seed: int

    def refuse(self, problems: list[str]) -> None:
        """Raise one ``TaskParameterError`` listing every problem, if there is any."""
        if problems:
            raise TaskParameterError(f"task {self.name!r}: " + "; ".join(problems))

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` ("train" or "test")."""
        check_split(split)
        return self.num_train if split == "train" else self.num_test

    def example_rngs(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, Iterator]:
        """The validated indices and, lazily, each one's ``(row, rng)`` from ``example_rng(seed, split, index)``."""
        split_id = check_split(split)
        rows = check_indices(split, indices, self.num_examples(split))
        streams = ((row, example_rng(self.seed, split_id, index)) for row, index in enumerate(rows.tolist()))
        return rows, streams

    def score(self, predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
        """Per-example accuracy ``(batch_size,)`` over the supervised positions."""
        return per_example_accuracy(predictions, targets, example_index, batch_size)

    def describe(self) -> dict[str, Any]:
        """The constructor parameters and ``name``; ``build_task(**task.describe())`` rebuilds this task."""
        return constructor_params(self)


def docstring_example(module_doc: str) -> tuple[list[int], list[int]]:
    """The worked example's ``inputs:`` and ``labels:`` rows of a task module's docstring (used by the tests,
    so that the documented layout is checked against the generator's rules)."""
    rows = {}
    for line in module_doc.splitlines():
        head, _, rest = line.strip().partition(":")
        if head in ("inputs", "labels") and head not in rows:
            rows[head] = [int(token) for token in rest.split()]
    return rows["inputs"], rows["labels"]


def shortcut_accuracies(task: SyntheticTokenTask, num_fit: int, num_eval: int) -> dict[str, float]:
    """Test accuracy of two predictors that never read the inputs, fitted on the first ``num_fit`` training
    examples and scored on the first ``num_eval`` test examples: ``frequency`` predicts the most frequent target
    everywhere; ``position`` predicts, at each position, the target most frequent there. A sound task keeps both
    at chance."""
    _, fit_labels = task.batch("train", np.arange(num_fit))
    _, labels = task.batch("test", np.arange(num_eval))
    fit_mask = fit_labels != IGNORE_INDEX
    most_frequent = int(torch.bincount(fit_labels[fit_mask], minlength=task.vocab_size).argmax())
    counts = torch.zeros(task.seq_len, task.vocab_size, dtype=torch.int64)
    fit_positions = torch.nonzero(fit_mask)[:, 1]
    counts.index_put_((fit_positions, fit_labels[fit_mask]), torch.ones_like(fit_positions), accumulate=True)
    best_at = counts.argmax(dim=1)

    mask = labels != IGNORE_INDEX
    example_index, positions = torch.nonzero(mask).unbind(dim=1)
    targets = labels[mask]
    predictions = {"frequency": torch.full_like(targets, most_frequent), "position": best_at[positions]}
    return {
        name: float(task.score(prediction, targets, example_index, num_eval).mean())
        for name, prediction in predictions.items()
    }
