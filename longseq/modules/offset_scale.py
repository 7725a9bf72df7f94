"""OffsetScale: several tensors from one by a learned per-channel scale and offset (GAU, Hua et al. 2022; MEGA).

MEGA and GAU compute one shared representation Z and read queries and keys off it cheaply: head h is
z ⊙ γ_h + β_h, with γ_h ~ N(0, 0.02²) and β_h = 0 at initialisation (as MEGA's reference).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OffsetScale(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        """dim: channels of z; heads: how many tensors come out (2 for MEGA's q and k)."""
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"OffsetScale: {name}={value!r} must be a positive integer")
        self.dim, self.heads = dim, heads
        self.gamma = nn.Parameter(0.02 * torch.randn(heads, dim))
        self.beta = nn.Parameter(torch.zeros(heads, dim))

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        """z: (..., dim) -> ``heads`` tensors (..., dim), the h-th z * gamma_h + beta_h."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"OffsetScale: z must have {self.dim} channels in its last dim, got {tuple(z.shape)}")
        return (z[..., None, :] * self.gamma + self.beta).unbind(dim=-2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}"
