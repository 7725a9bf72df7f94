"""Windows cut from long sequences (texts, genomes), with a train/test separation that cannot leak.

**The split rule.** A sequence of ``n`` tokens is cut once, at ``cut = n - floor(n * TEST_FRACTION)``: its train
region is ``[0, cut)`` and its test region ``[cut, n)``, the last 20%. A window lies wholly inside one region, so no
test window shares a token position with any train window of the same sequence (``split_region``). Tasks that hold
out whole sequences instead (``dna_lm``: a held-out genome) give a split's pool whole sequences.

**Drawing.** A ``WindowPool`` holds the regions of one split (and one class); a draw is uniform over every window
of ``length`` tokens that fits in one of its regions — a region is picked with probability proportional to its
number of window positions, then the position uniformly — from one integer of the example's generator. A region
shorter than the window contributes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TEST_FRACTION = 0.2
"""Share of each sequence, at its end, that forms the test region."""


@dataclass(frozen=True, eq=False)
class Region:
    """Tokens ``data[start:stop]`` of sequence ``name`` (``data`` is the whole sequence, uint8, shared)."""

    name: str
    data: np.ndarray
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Window:
    """A drawn window: tokens ``[start, stop)`` of sequence ``name`` (positions in the whole sequence)."""

    name: str
    start: int
    stop: int


def split_region(name: str, data: np.ndarray, split: str) -> Region:
    """The train (first 80%) or test (last 20%) region of sequence ``data`` (module docstring)."""
    n = int(data.shape[0])
    cut = n - int(n * TEST_FRACTION)
    if split == "train":
        return Region(name, data, 0, cut)
    if split == "test":
        return Region(name, data, cut, n)
    raise ValueError(f"unknown split {split!r}; allowed: 'train', 'test'")


class WindowPool:
    """Every window of ``length`` tokens inside one of ``regions``, drawn uniformly (module docstring)."""

    def __init__(self, regions: Sequence[Region], length: int) -> None:
        if length < 1:
            raise ValueError(f"window length must be >= 1, got {length}")
        self.length = length
        self.longest = max((region.size for region in regions), default=0)
        self.regions = [region for region in regions if region.size >= length]
        self._cumulative = np.cumsum([region.size - length + 1 for region in self.regions], dtype=np.int64)

    @property
    def num_windows(self) -> int:
        """How many distinct windows the pool holds (0: the window fits in none of its regions)."""
        return int(self._cumulative[-1]) if self._cumulative.size else 0

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, Window]:
        """One window's tokens ``(length,) uint8`` (a read-only view) and where it lies."""
        if not self.num_windows:
            raise ValueError(f"no region holds a window of {self.length} tokens (the longest has {self.longest})")
        k = int(rng.integers(self.num_windows))
        which = int(np.searchsorted(self._cumulative, k, side="right"))
        region = self.regions[which]
        start = region.start + k - (int(self._cumulative[which - 1]) if which else 0)
        stop = start + self.length
        return region.data[start:stop], Window(region.name, start, stop)
