"""RelativePositionBias: MEGA's "simple" relative position bias, one learned scalar per offset.

A table of 2P - 1 values b (P = ``max_positions``), N(0, 0.02²) at initialisation as MEGA's reference; the bias
between a query and a key is b[j - i + P - 1] for the offset j - i (key minus query), |j - i| < P. MEGA uses it
inside attention chunks (P = the chunk size) or over whole sequences (P = the longest one); an offset it cannot
represent is an error, never a silent clamp.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RelativePositionBias(nn.Module):
    def __init__(self, max_positions: int) -> None:
        """max_positions: P, the offsets represented are -(P-1)..P-1."""
        super().__init__()
        if not isinstance(max_positions, int) or isinstance(max_positions, bool) or max_positions <= 0:
            raise ValueError(f"RelativePositionBias: max_positions={max_positions!r} must be a positive integer")
        self.max_positions = max_positions
        self.weight = nn.Parameter(0.02 * torch.randn(2 * max_positions - 1))

    def forward(self, offsets: Tensor) -> Tensor:
        """offsets: integer tensor of key-minus-query offsets j - i, |j - i| < P -> float bias of the same shape."""
        if offsets.is_floating_point() or offsets.is_complex() or offsets.dtype == torch.bool:
            raise ValueError(f"RelativePositionBias: offsets must be an integer tensor, got {offsets.dtype}")
        p = self.max_positions
        if offsets.numel() and int(offsets.abs().max()) >= p:
            raise ValueError(f"RelativePositionBias: offset {int(offsets.abs().max())} is beyond max_positions={p}; "
                             f"allowed offsets: -{p - 1}..{p - 1}")
        return self.weight[offsets + (p - 1)]

    def extra_repr(self) -> str:
        return f"max_positions={self.max_positions}"
