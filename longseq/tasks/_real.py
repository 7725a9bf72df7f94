"""Plumbing shared by the tasks that read real datasets (``longseq.data``): the ``paths`` parameter, and
class-balanced windows of real sequences drawn per example. Registers nothing.

**Examples.** Example ``i`` of split ``s`` is a pure function of ``(seed, s, i)``, the parameters and the data
files: its generator is ``example_rng(seed, s, i)``; a window task draws the class uniformly from it (labels are
balanced in expectation), then a window uniformly among every window of that class and split
(``data.windows.WindowPool``), so a batch never depends on its other rows.

**Separation.** Each split draws from its own regions (``data.windows``: the last 20% of every sequence is test,
or whole held-out sequences), so no test window overlaps a train window. A window classification task's
validation split (``val``, split id 2) draws from the test regions with its own streams, as LRA's Text task
validates on its test set: a validation window is another draw than any test example, but it may share bytes
with one, so choosing a checkpoint on it is choosing on held-out text close to the test text (never on training
text). The data fingerprint does not hash it (``tasks.fingerprint``).

**Fingerprints.** ``tasks.fingerprint.data_fingerprint`` hashes the first 64 examples of each split. Here those
are bytes read from the files, at positions that depend on every sequence's length, so the fingerprint also
identifies the data files: other files (another release, a sample copy, a truncated download) give another
fingerprint, except for an edit that keeps every length and touches none of the 128 hashed windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from longseq.data.windows import Region, Window, WindowPool, split_region
from longseq.tasks._tokens import SyntheticTokenTask
from longseq.tasks.base import (
    VAL_SPLITS,
    TaskParameterError,
    check_indices,
    check_split,
    example_rng,
    task_splits,
)

DataPaths = dict[str, str] | None
"""The ``paths`` task parameter: dataset name -> its root, overriding ``LONGSEQ_DATA_<NAME>`` and the default."""


def check_paths(task: str, paths: Mapping[str, str] | None, datasets: Sequence[str]) -> None:
    """Refuse a ``paths`` key that is not a dataset the task reads."""
    unknown = sorted(set(paths or ()) - set(datasets))
    if unknown:
        raise TaskParameterError(
            f"task {task!r}: paths has unknown dataset(s) {', '.join(map(repr, unknown))}; this task reads: "
            f"{', '.join(map(repr, datasets))}"
        )


class WindowDraws:
    """Per split of ``regions``, one ``WindowPool`` per class: ``regions[split][class name]`` are that class's
    regions (``regions["train"]`` gives the class names, in order).

    Refuses (``TaskParameterError``, ending with ``note``) a window length that leaves some class of some split
    without a window; ``length_name`` names the parameter that set it.
    """

    def __init__(self, task: str, length: int, regions: Mapping[str, Mapping[str, Sequence[Region]]],
                 length_name: str = "seq_len", note: str = "") -> None:
        self.class_names = tuple(regions["train"])
        self.pools = {split: [WindowPool(by_class[name], length) for name in self.class_names]
                      for split, by_class in regions.items()}
        problems = [
            f"the {split} regions of {name!r} are at most {pool.longest:,} tokens long"
            for split, pools in self.pools.items() for name, pool in zip(self.class_names, pools, strict=True)
            if not pool.num_windows
        ]
        if problems:
            raise TaskParameterError(f"task {task!r}: {length_name}={length} does not fit: windows are {length:,} "
                                     f"tokens and {'; '.join(problems)}{note}")

    @classmethod
    def cut_sequences(cls, task: str, length: int, sequences: Mapping[str, Sequence[tuple[str, np.ndarray]]],
                      length_name: str = "seq_len") -> WindowDraws:
        """Windows of ``(name, data)`` sequences per class, each cut 80/20 into its train and test regions
        (``split_region``); the validation split draws from the test regions (module docstring). A sequence takes
        part only if its test region (the shorter) holds a window, so every class draws from the same sequences in
        every split; a class none of whose sequences does keeps them all, for the refusal to name its longest
        region."""
        kept = {name: [(seq, data) for seq, data in seqs if split_region(seq, data, "test").size >= length]
                or list(seqs) for name, seqs in sequences.items()}
        regions = {split: {name: [split_region(seq, data, split) for seq, data in seqs]
                           for name, seqs in kept.items()} for split in ("train", "test")}
        regions["val"] = regions["test"]
        return cls(task, length, regions, length_name, " (the test region is the last 20% of each sequence)")

    def draw(self, split: str, rng: np.random.Generator) -> tuple[int, np.ndarray, Window]:
        """A class drawn uniformly, then one of its windows: ``(label, tokens (length,) uint8, window)``."""
        pools = self.pools[split]
        label = int(rng.integers(len(pools)))
        tokens, window = pools[label].draw(rng)
        return label, tokens, window


class WindowTask(SyntheticTokenTask):
    """Base of the window tasks: a subclass sets ``windows`` (a ``WindowDraws``) in its constructor."""

    windows: WindowDraws
    pad_id = None

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split``: ``num_train``, or ``num_test`` for "test" and (if the task has it)
        "val"."""
        check_split(split, task_splits(self))
        return self.num_train if split == "train" else self.num_test

    def draws(self, split: str, indices: Sequence[int] | np.ndarray) -> list[tuple[int, np.ndarray, Window]]:
        """``(label, tokens, window)`` of each example of ``indices`` (validated), in order."""
        split_id = check_split(split, task_splits(self))
        rows = check_indices(split, indices, self.num_examples(split))
        return [self.windows.draw(split, example_rng(self.seed, split_id, index)) for index in rows.tolist()]

    def stacked(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``windows: (B, window length) int64`` and ``labels: (B,) int64`` of the examples ``indices``."""
        draws = self.draws(split, indices)
        length = self.windows.pools[split][0].length
        tokens = np.stack([t for _, t, _ in draws]) if draws else np.empty((0, length), dtype=np.uint8)
        labels = np.array([label for label, _, _ in draws], dtype=np.int64)
        return torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(labels)


class WindowClassification(WindowTask):
    """A window task labelled by class: ``labels`` are indices into ``class_names``; accuracy per example. Its
    validation split draws from the test regions (module docstring)."""

    class_names: tuple[str, ...]
    num_classes: int
    splits = VAL_SPLITS

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, seq_len) int64`` tokens and ``labels: (B,) int64`` indices into ``class_names``."""
        return self.stacked(split, indices)
