"""Test-only mixers that fail on purpose at chosen lengths, for the speed bench's isolation tests.

Not a test module (no ``test_`` prefix): the tests pass this file's path to ``run_speed_bench(imports=[...])``,
which imports it in the bench process and in every child, registering ``bench_faulty`` there.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import torch
from torch import Tensor, nn

from longseq.mixers import Mixer, Pattern, register

_CHUNK_BYTES = 32 * 2**20
_HOG_LIMIT_BYTES = 64 * 2**30  # never reached: the watchdog kills the child far earlier
# ``quadratic`` holds this many bytes per L^2 while it runs: 16 MiB at L=32, 1 GiB at L=256.
QUADRATIC_BYTES_PER_L2 = 2**17

Fault = Literal["none", "raise", "abort", "hog", "sleep", "quadratic"]


@register("bench_faulty")
class FaultyMixer(Mixer):
    """y = W x, plus a fault at sequence lengths >= ``at`` (``abort``: exactly at ``at``, so that a fresh child
    can measure the longer lengths):

    raise: a RuntimeError. abort: ``os.abort()`` kills the process (SIGABRT). hog: allocates memory until it is
    killed. sleep: sleeps ``sleep_s`` seconds. quadratic (every length): holds ``QUADRATIC_BYTES_PER_L2 * L^2`` bytes
    while it runs, a deterministic memory curve to extrapolate.
    """

    def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.CAUSAL_SELF, max_len: int | None = None,
                 fault: Fault = "none", at: int = 64, sleep_s: float = 60.0) -> None:
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.fault, self.at, self.sleep_s = fault, at, sleep_s
        self.proj = nn.Linear(d_model, d_model)

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        length = x.shape[1]
        if self.fault == "quadratic":
            held = torch.ones(QUADRATIC_BYTES_PER_L2 * length * length // 4)  # float32: 4 bytes each
            return self.proj(x) + held[0] * 0
        if self.fault == "abort" and length == self.at:
            os.abort()
        if length >= self.at:
            if self.fault == "raise":
                raise RuntimeError(f"bench_faulty: deliberate failure at L={length}")
            if self.fault == "hog":
                hoard = []
                while len(hoard) * _CHUNK_BYTES < _HOG_LIMIT_BYTES:
                    hoard.append(torch.ones(_CHUNK_BYTES // 4))
                    time.sleep(0.002)
            if self.fault == "sleep":
                time.sleep(self.sleep_s)
        return self.proj(x)
