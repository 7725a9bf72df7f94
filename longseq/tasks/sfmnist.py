"""Sequential Fashion-MNIST (sFMNIST, psFMNIST) and its 32x32 padding, the LRA-Image stand-in.

MNIST and CIFAR-10 are not available offline; Fashion-MNIST is (Debian ``dataset-fashion-mnist``, the same IDX
format as MNIST), so it stands in for both sequential-image benchmarks (``tasks.md`` §1g, §2.3):

- **sFMNIST**: an image's 28x28 pixel bytes in raster order (rows first), 784 tokens over a 256-symbol vocabulary,
  10 classes. sMNIST's tokenized form (S4 also offers [0, 1] floats; tokens are what every mixer here takes).
- **psFMNIST** (``permute``): the same tokens reordered by one fixed permutation of the positions, applied to every
  image. ``random`` is ``numpy.random.RandomState(92916).permutation(L)``, the seed of the random permutation in
  an S4 code comment, fixed so that every run and seed sees the same one; ``bitrev`` is S4's bit-reversal
  permutation: position ``i`` in ``[0, 2^ceil(log2 L))`` goes to the integer with the reversed bits, and the
  reversed values ``>= L`` are dropped (for L = 1024 an exact bit reversal; for 784 the order of those < 784).
- **pad32** (the **LRA-Image stand-in**): each image zero-padded by 2 pixels on every side to 32x32, 1024 tokens,
  the length of LRA's grayscale CIFAR-10 ("Image"). It is Fashion-MNIST, not CIFAR-10: results are not comparable
  with LRA's Image numbers. The padding is black pixels (token 0, as the background), part of the image, so there
  is no ``pad_id`` and no mask; ``permute`` then acts on the 1024 positions.

**Splits.** The test split is the package's 10,000 test images; the train and validation splits share its 60,000
training images (two different files: nothing shared with test). Example ``i`` of a split is image ``order[i]``,
``order`` a permutation of the file's images seeded by ``(seed, file)``, so each seed sees a different order and
``num_train`` / ``num_test`` (default: every image) take a seeded random subset. The **validation split** is the
last ``floor(10%)`` of the training file's order (6,000 images), held out of ``train``, whose examples are the
first 54,000 of that order: S4 also holds 10% of the training set out, with a fixed seed (here the task's
``seed``, never the training seed); the validation split takes all of them (``num_examples("val")``). Holding
them out kept the train split's first examples, so the data fingerprint (which hashes 64 of them) did not move;
``num_train`` above 54,000 is refused. Labels are Fashion-MNIST's, about 6,000 and 1,000 per class.

The data fingerprint (``tasks/fingerprint.py``) hashes the first 64 examples of each split, pixels read from the
files, so it also tells two copies of the data apart (``tasks/_real.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from longseq.data.fashion_mnist import NAME, NUM_CLASSES, SIDE, load_fashion_mnist
from longseq.tasks._real import DataPaths, check_paths
from longseq.tasks._tokens import PositiveInt, Seed, SyntheticTokenTask
from longseq.tasks.base import SPLITS, VAL_SPLITS, check_indices, check_split, register_task

RANDOM_PERMUTATION_SEED = 92916
"""Seed of ``permute="random"`` (module docstring)."""
PAD = 2
"""Zero pixels added on each side by ``pad32``: 28 + 2 * 2 = 32."""
VAL_FRACTION = 0.1
"""Share of the training images held out as the validation split (module docstring)."""
FILE_OF_SPLIT = {"train": "train", "val": "train", "test": "test"}
"""Split -> the file of images it draws from (``load_fashion_mnist``'s split)."""


def bit_reversal_permutation(length: int) -> np.ndarray:
    """``(length,) int64``: S4's bit-reversal order of ``range(length)`` (module docstring)."""
    bits = max(1, math.ceil(math.log2(length)))
    reversed_ = np.zeros(2**bits, dtype=np.int64)
    positions = np.arange(2**bits)
    for bit in range(bits):
        reversed_ |= ((positions >> bit) & 1) << (bits - 1 - bit)
    return reversed_[reversed_ < length]


def pixel_order(permute: str, length: int) -> np.ndarray | None:
    """The position permutation ``(length,)`` of ``permute`` (None for ``"none"``): token ``j`` is pixel
    ``order[j]`` of the raster-order image."""
    if permute == "none":
        return None
    if permute == "random":
        return np.random.RandomState(RANDOM_PERMUTATION_SEED).permutation(length)
    return bit_reversal_permutation(length)


@functools.lru_cache(maxsize=16)
def _image_order(seed: int, split_id: int, count: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split_id]))).permutation(count)


@register_task("sfmnist")
class SequentialFashionMNIST(SyntheticTokenTask):
    """Sequential / permuted Fashion-MNIST, 784 pixel tokens, 10 classes; pad32: 1024 tokens, the LRA-Image stand-in.

    The stand-in is Fashion-MNIST padded to 32x32, not CIFAR-10.

    Parameters: ``permute`` none / random / bitrev (a fixed permutation of the positions), ``pad32`` (zero-pad to
    32x32), ``num_train`` / ``num_test`` (default: all 54,000 / 10,000 images; the other 6,000 training images are
    the validation split), ``seed`` (the images' order and the held-out images) and
    ``paths`` (``{"fashion-mnist": DIR}``; default ``LONGSEQ_DATA_FASHION_MNIST`` or the Debian package's
    ``/usr/share/datasets/fashion-mnist``). A missing dataset raises ``DatasetMissing`` naming its install command.
    """

    name = "sfmnist"
    vocab_size = 256
    num_classes = NUM_CLASSES
    pad_id = None
    splits = VAL_SPLITS

    def __init__(
        self,
        *,
        permute: Literal["none", "random", "bitrev"] = "none",
        pad32: bool = False,
        num_train: PositiveInt | None = None,
        num_test: PositiveInt | None = None,
        seed: Seed = 0,
        paths: DataPaths = None,
    ) -> None:
        check_paths(self.name, paths, [NAME])
        self.permute, self.pad32, self.seed, self.paths = permute, pad32, seed, paths
        self.num_train, self.num_test = num_train, num_test
        root = (paths or {}).get(NAME)
        self.data = {file: load_fashion_mnist(file, root) for file in ("train", "test")}
        held_out = int(self.data["train"][0].shape[0] * VAL_FRACTION)
        # Examples of a split are positions [offset, offset + size) of its file's seeded order.
        self.offsets = {"train": 0, "val": self.data["train"][0].shape[0] - held_out, "test": 0}
        self.sizes = {"val": held_out}
        for split, requested in (("train", num_train), ("test", num_test)):
            available = self.data[split][0].shape[0] - (held_out if split == "train" else 0)
            if requested is not None and requested > available:
                self.refuse([f"num_{split}={requested}: the {split} split has {available} images; allowed <= "
                             f"{available} (or None: all)"])
            self.sizes[split] = available if requested is None else requested
        side = SIDE + 2 * PAD if pad32 else SIDE
        self.seq_len = side * side
        self.order = pixel_order(permute, self.seq_len)

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split``: ``num_train`` / ``num_test``, or every image of the split; "val": the
        held-out training images."""
        check_split(split, self.splits)
        return self.sizes[split]

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, seq_len) int64`` pixel bytes and ``labels: (B,) int64`` classes 0..9."""
        rows = check_indices(split, indices, self.num_examples(split))
        file = FILE_OF_SPLIT[split]
        images, labels = self.data[file]
        picked = _image_order(self.seed, SPLITS[file], images.shape[0])[self.offsets[split] + rows]
        pixels = images[picked]
        if self.pad32:
            pixels = np.pad(pixels, ((0, 0), (PAD, PAD), (PAD, PAD)))
        tokens = pixels.reshape(rows.size, self.seq_len)
        if self.order is not None:
            tokens = tokens[:, self.order]
        return torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(labels[picked].astype(np.int64))
