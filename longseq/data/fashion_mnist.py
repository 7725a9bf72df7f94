"""Fashion-MNIST (Zalando; Debian ``dataset-fashion-mnist``): images and labels of one split, checked.

The package installs the four original IDX files (``registry.DATASETS["fashion-mnist"]``): ``train-*`` (60,000
images) and ``t10k-*`` (10,000), images ``(N, 28, 28)`` uint8 (0 = background), labels ``(N,)`` in 0..9. The train
and test splits are the two file pairs, so they share no image. Each file is decoded once per process.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from longseq.data._cache import cached_by_file
from longseq.data.idx import read_idx
from longseq.data.registry import DatasetFormatError, locate

NAME = "fashion-mnist"
NUM_CLASSES = 10
SIDE = 28
FILE_PREFIX = {"train": "train", "test": "t10k"}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")

_read = cached_by_file(maxsize=8)(read_idx)


def load_fashion_mnist(split: str, path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``images: (N, 28, 28) uint8`` and ``labels: (N,) uint8`` of ``split`` ("train" or "test"), read-only.

    ``path`` overrides where the dataset is looked for (``registry.locate``); a missing dataset raises
    ``DatasetMissing``, malformed files ``DatasetFormatError``.
    """
    if split not in FILE_PREFIX:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(map(repr, FILE_PREFIX))}")
    root = locate(NAME, path)
    prefix = FILE_PREFIX[split]
    images_path: Path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path: Path = root / f"{prefix}-labels-idx1-ubyte.gz"
    images, labels = _read(images_path), _read(labels_path)
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise DatasetFormatError(f"{images_path}: images must have shape (N, {SIDE}, {SIDE}), got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetFormatError(
            f"{labels_path}: labels must have shape ({images.shape[0]},) to match {images_path.name}, "
            f"got {labels.shape}"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DatasetFormatError(f"{labels_path}: label {int(labels.max())} is out of range 0..{NUM_CLASSES - 1}")
    return images, labels
