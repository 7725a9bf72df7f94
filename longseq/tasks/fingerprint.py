"""Data fingerprints: a short hash of what a task actually generates, recorded with every run.

A task's parameters (``describe()``) say what data was *asked for*; the fingerprint says what data a generator
*produced*. Two runs with equal parameters but different fingerprints were trained on different data (a
generator's code changed in between) and are not comparable.

The fingerprint is the first 16 hex digits of a SHA-256 over the first ``FINGERPRINT_EXAMPLES`` (64) examples of
the ``train`` and ``test`` splits, in that order (fewer when a split is smaller): for each, the ``inputs`` and
``labels`` of ``task.batch(split, range(n))`` as little-endian bytes, each preceded by its split, name, dtype and
shape. It depends on nothing else (no process state, no hash seed, no device), so it is identical across processes
and machines, identical for identical parameters, and changes when a generator's output changes.

The validation split is not hashed, on purpose: the splits are named here (``HASHED_SPLITS``), not taken from
``tasks.base.SPLITS``, so the fingerprints recorded before tasks had a validation split still identify their data.
(Where ``val`` is data held out of ``train``, as sfmnist's, the hold-out changes the train split's size, which the
hashed examples reflect only when the train split holds fewer than 64 examples.)

Where it is used: ``longseq.train.experiment.run_experiment`` stores it as ``config["data_fingerprint"]`` of every
run it records; ``longseq.bench.quality.run_key`` mixes it into each quality run's ``cell_key`` (so a finished run
with another fingerprint is not finished for the current data, and runs in its own folder); the report shows it
and never mixes cells of one task setting with different fingerprints.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from longseq.tasks.base import Task, build_task

FINGERPRINT_EXAMPLES = 64
"""Examples of each split hashed into a fingerprint."""
FINGERPRINT_DIGITS = 16
HASHED_SPLITS: tuple[str, ...] = ("train", "test")
"""The splits a fingerprint hashes, in order (module docstring)."""
_DOMAIN = b"longseq-data-fingerprint-v1\0"


def _little_endian(tensor: torch.Tensor) -> np.ndarray:
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def data_fingerprint(task: Task, examples: int = FINGERPRINT_EXAMPLES) -> str:
    """The fingerprint (16 hex digits) of ``task``'s data: see the module docstring."""
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ValueError(f"examples={examples!r}: allowed an int >= 1")
    digest = hashlib.sha256(_DOMAIN)
    for split in HASHED_SPLITS:
        count = min(examples, task.num_examples(split))
        inputs, labels = task.batch(split, np.arange(count, dtype=np.int64))
        for name, tensor in (("inputs", inputs), ("labels", labels)):
            array = _little_endian(tensor)
            digest.update(f"{split}.{name}:{array.dtype.str}:{list(array.shape)}\0".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


def task_fingerprint(name: str, **params: Any) -> str:
    """``data_fingerprint(build_task(name, **params))``."""
    return data_fingerprint(build_task(name, **params))


__all__ = ["FINGERPRINT_EXAMPLES", "HASHED_SPLITS", "data_fingerprint", "task_fingerprint"]
