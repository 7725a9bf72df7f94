"""GatedRMSNorm: Mamba-2's output norm, RMSNorm gated by silu(z) (the math is ``longseq.ops.norm``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longseq.ops.norm import check_group_size, gated_rms_norm


class GatedRMSNorm(nn.Module):
    def __init__(self, d: int, *, eps: float = 1e-5, norm_before_gate: bool = False,
                 group_size: int | None = None) -> None:
        """d: channels; norm_before_gate: False = rmsnorm(x * silu(z)) * weight (Mamba-2), True = rmsnorm(x) *
        weight * silu(z); group_size: channels normalised together (a divisor of d; None = all d)."""
        super().__init__()
        if not isinstance(d, int) or d <= 0:
            raise ValueError(f"GatedRMSNorm: d={d!r} must be a positive integer")
        if not eps > 0:
            raise ValueError(f"GatedRMSNorm: eps={eps!r} must be > 0")
        self.group_size = check_group_size("GatedRMSNorm", d, group_size)
        self.d, self.eps, self.norm_before_gate = d, eps, norm_before_gate
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """x, z: (..., D) -> (..., D). z=None: no gate, a plain (grouped) RMSNorm."""
        return gated_rms_norm(x, z, self.weight, eps=self.eps, norm_before_gate=self.norm_before_gate,
                              group_size=self.group_size)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, norm_before_gate={self.norm_before_gate}, group_size={self.group_size}"
