"""What the generated classification tasks (ListOps, Pathfinder) share: their split sizes, metric and description.

A subclass sets ``name``, ``vocab_size``, ``num_classes``, ``pad_id``, ``seq_len``, ``num_train``, ``num_test`` and
``seed`` and implements ``batch``; the validation split is a fresh draw of ``num_test`` examples from its own split
id, as LRA's validation sets are the size of its test sets.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from longseq.tasks.base import VAL_SPLITS, check_split, constructor_params, per_example_accuracy


class GeneratedClassification:
    metric_name = "accuracy"
    higher_is_better = True
    splits = VAL_SPLITS
    num_train: int
    num_test: int

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split``: ``num_train``, or ``num_test`` for "test" and "val"."""
        check_split(split, self.splits)
        return self.num_train if split == "train" else self.num_test

    def score(self, predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
        """Per-example accuracy ``(batch_size,)``: 1 where the predicted class is the label, else 0."""
        return per_example_accuracy(predictions, targets, example_index, batch_size)

    def describe(self) -> dict[str, Any]:
        """The constructor parameters and ``name``; ``build_task(**task.describe())`` rebuilds this task."""
        return constructor_params(self)
