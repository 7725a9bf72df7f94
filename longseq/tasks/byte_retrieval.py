"""Byte-level retrieval of two text windows, "from the same work?": the LRA-Retrieval stand-in, offline.

LRA's Retrieval task asks whether two papers of the ACL Anthology Network cite each other, each read as up to 4,000
bytes and encoded apart by one shared encoder, an MLP deciding from the two pooled encodings (a two-tower, "dual
encoder" model). AAN cannot be had offline, so this task keeps the form and changes the question: are two 4,096-byte
windows (``window``) drawn from the same work? It is not AAN: results are not comparable with LRA's Retrieval
numbers (``tasks.md`` §2.3).

**Works** are the documents of ``longseq.data.text`` from ``sources``: ``shakespeare`` (37 plays, 5 poems) and
``milton`` (4 works), both in dataset ``shakespeare`` (the default: literature only, so no pair is told apart by
prose against reStructuredText), and optionally ``python-docs`` (one work per documentation page). A work takes
part when it holds at least ``3 * window - 1`` bytes: then every window of it has a partner window that does not
overlap it (below).

**Splits by work.** Each source's works, sorted by name, go by position ``i % 10`` to ``test`` (0 and 5), ``val``
(3) or ``train`` (the other 7): about 70/10/20, the same for every seed. A work belongs to one split only, so test
pairs are of works never seen in training, as AAN's test papers are; each split needs two works at least.

**An example** of a split is a pure function of ``(seed, split, index)`` (``base.example_rng``): the label is
uniform (1: same work, 0: different works, balanced), then the first window is uniform over every window of the
split's works (a longer work gives more). For label 1 the second window is uniform over the windows of the same
work that share no byte with the first (an overlap would give the answer away as a repeated substring); for label
0 it is uniform over the windows of the split's other works.

**Layout** (``segments = 2``): ``inputs: (B, 2 * window)``, the first window then the second, bytes as tokens
(vocabulary 256, no padding); ``labels: (B,)``. ``run_experiment`` builds a ``TwoTowerClassifier`` for it, which
splits each row in halves and encodes them with one encoder (``models/two_tower.py``). Defaults: 147,086 training
pairs (S4's AAN config) and 17,000 test pairs (AAN's test set holds about that many), the validation split as large
as the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from longseq.data.text import Document, milton_documents, python_doc_documents, shakespeare_documents
from longseq.tasks._real import DataPaths, check_paths
from longseq.tasks._tokens import PositiveInt, Seed, SyntheticTokenTask
from longseq.tasks.base import VAL_SPLITS, check_indices, check_split, example_rng, register_task

Source = Literal["shakespeare", "milton", "python-docs"]
SPLIT_OF_POSITION = {0: "test", 5: "test", 3: "val"}
"""A work's position (sorted by name, within its source) modulo 10 -> its split; the other positions are train."""
CLASS_NAMES = ("different", "same")
"""Label 0: the windows come from different works; 1: from the same work."""
_DATASET_OF_SOURCE = {"shakespeare": "shakespeare", "milton": "shakespeare", "python-docs": "python-docs"}


def split_of_work(position: int) -> str:
    """The split of the work at ``position`` in its source's sorted list (module docstring)."""
    return SPLIT_OF_POSITION.get(position % 10, "train")


def source_documents(sources: Sequence[str], paths: dict[str, str] | None) -> list[Document]:
    """The documents of ``sources``, each source's sorted by name."""
    paths = paths or {}
    readers = {"shakespeare": shakespeare_documents, "milton": milton_documents,
               "python-docs": python_doc_documents}
    return [doc for source in sources
            for doc in sorted(readers[source](paths.get(_DATASET_OF_SOURCE[source])), key=lambda d: d.name)]


class WorkWindows:
    """Every window of ``length`` bytes of some works, with the two draws of a pair (module docstring)."""

    def __init__(self, works: Sequence[Document], length: int) -> None:
        self.works = list(works)
        self.length = length
        counts = np.array([doc.data.shape[0] - length + 1 for doc in self.works], dtype=np.int64)
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # work w owns window ids [starts[w], starts[w+1])

    def _window(self, work: int, start: int) -> np.ndarray:
        return self.works[work].data[start : start + self.length]

    def first(self, rng: np.random.Generator) -> tuple[int, int]:
        """``(work, start)`` uniform over every window of every work."""
        k = int(rng.integers(self.starts[-1]))
        work = int(np.searchsorted(self.starts, k, side="right")) - 1
        return work, k - int(self.starts[work])

    def disjoint_partner(self, rng: np.random.Generator, work: int, start: int) -> int:
        """A start uniform over the windows of ``work`` that share no byte with the one at ``start``: those in
        ``[0, start - length]`` and ``[start + length, n - length]`` (never empty when ``n >= 3 length - 1``)."""
        n, length = self.works[work].data.shape[0], self.length
        before = max(0, start - length + 1)
        after = max(0, n - length - (start + length) + 1)
        k = int(rng.integers(before + after))
        return k if k < before else start + length + (k - before)

    def other_work(self, rng: np.random.Generator, work: int) -> tuple[int, int]:
        """``(work, start)`` uniform over the windows of every work but ``work``."""
        k = int(rng.integers(self.starts[-1] - self.counts[work]))
        if k >= self.starts[work]:
            k += int(self.counts[work])  # skip the windows of ``work``
        other = int(np.searchsorted(self.starts, k, side="right")) - 1
        return other, k - int(self.starts[other])

    def pair(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """``(label, tokens (2 * length,) uint8)``: the label, then the first window and its partner."""
        label = int(rng.integers(2))
        work, start = self.first(rng)
        second = (work, self.disjoint_partner(rng, work, start)) if label == 1 else self.other_work(rng, work)
        return label, np.concatenate([self._window(work, start), self._window(*second)])


@register_task("byte_retrieval")
class ByteRetrieval(SyntheticTokenTask):
    """Are two 4,096-byte text windows from the same work? A two-tower pair task: the LRA-Retrieval stand-in.

    Works of Shakespeare and Milton (optionally Python docs), split by work; offline texts, not AAN.

    Parameters: ``sources`` (default shakespeare, milton), ``window`` (bytes per window, 4,096; ``seq_len`` is
    twice it), the split sizes (147,086 and 17,000; ``val`` as large as test), ``seed``, ``paths``
    (``{"shakespeare": DIR, "python-docs": DIR}``; defaults ``LONGSEQ_DATA_<NAME>`` or where ``longseq data``
    says). Labels: 1 same work, 0 different works.
    """

    name = "byte_retrieval"
    vocab_size = 256
    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    pad_id = None
    splits = VAL_SPLITS
    segments = 2

    def __init__(
        self,
        *,
        sources: Annotated[list[Source], Field(min_length=1)] = ["shakespeare", "milton"],  # noqa: B006 (copied)
        window: PositiveInt = 4096,
        num_train: PositiveInt = 147_086,
        num_test: PositiveInt = 17_000,
        seed: Seed = 0,
        paths: DataPaths = None,
    ) -> None:
        if len(set(sources)) != len(sources):
            self.refuse([f"sources={list(sources)}: a source is listed twice; allowed: distinct sources"])
        check_paths(self.name, paths, sorted({_DATASET_OF_SOURCE[source] for source in sources}))
        self.sources, self.window, self.seq_len = tuple(sources), window, 2 * window
        self.num_train, self.num_test, self.seed, self.paths = num_train, num_test, seed, paths
        works: dict[str, list[Document]] = {split: [] for split in VAL_SPLITS}
        for source in sources:
            long_enough = [doc for doc in source_documents([source], paths) if doc.data.shape[0] >= 3 * window - 1]
            for position, doc in enumerate(long_enough):
                works[split_of_work(position)].append(doc)
        short = [f"{split} has {len(docs)}" for split, docs in works.items() if len(docs) < 2]
        if short:
            self.refuse([f"window={window}: a split needs two works of at least 3 * window - 1 = {3 * window - 1:,} "
                         f"bytes from sources {list(sources)}, and {', '.join(short)}; allowed: a smaller window "
                         "or more sources"])
        self.pairs = {split: WorkWindows(docs, window) for split, docs in works.items()}

    def num_examples(self, split: str) -> int:
        """Number of pairs in ``split``: ``num_train``, or ``num_test`` for "test" and "val"."""
        check_split(split, self.splits)
        return self.num_train if split == "train" else self.num_test

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, 2 * window) int64``, the two windows side by side, and ``labels: (B,) int64`` (1: same
        work)."""
        split_id = check_split(split, self.splits)
        rows = check_indices(split, indices, self.num_examples(split))
        pairs = [self.pairs[split].pair(example_rng(self.seed, split_id, index)) for index in rows.tolist()]
        tokens = np.stack([t for _, t in pairs]) if pairs else np.empty((0, self.seq_len), dtype=np.uint8)
        labels = np.array([label for label, _ in pairs], dtype=np.int64)
        return torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(labels)
