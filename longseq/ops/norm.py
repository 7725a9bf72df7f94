"""Gated RMSNorm (Mamba-2): an RMSNorm whose input or output is gated by silu(z), normalised per channel group.

x, z: (..., D), weight: (D,). With ``norm_before_gate=False`` (Mamba-2's choice) y = rmsnorm(x * silu(z)) * weight;
with True, y = rmsnorm(x) * weight * silu(z). z=None means no gate: a plain RMSNorm. ``group_size`` (a divisor of
D; None = D) normalises each block of that many channels by its own RMS — Mamba-2 uses one group per head group
so that the norm does not mix heads and stays the same under tensor parallelism.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_group_size(fn: str, d: int, group_size: int | None) -> int:
    """The group size to use for D = d channels; a clear ValueError unless it is a positive divisor of d."""
    if group_size is None:
        return d
    if not isinstance(group_size, int) or group_size <= 0 or d % group_size:
        raise ValueError(f"{fn}: group_size={group_size!r} must be a positive divisor of the channel count {d}, "
                         f"or None (one group)")
    return group_size


def _check(fn: str, x: Tensor, z: Tensor | None, weight: Tensor, group_size: int | None) -> int:
    d = x.shape[-1]
    if weight.shape != (d,):
        raise ValueError(f"{fn}: weight must have shape (D,) = ({d},) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"{fn}: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    return check_group_size(fn, d, group_size)


def gated_rms_norm(x: Tensor, z: Tensor | None, weight: Tensor, *, eps: float = 1e-5, norm_before_gate: bool = False,
                   group_size: int | None = None) -> Tensor:
    """x, z: (..., D), weight: (D,) -> y: (..., D) in x's dtype; computed in float32 at least (float64 stays)."""
    g = _check("gated_rms_norm", x, z, weight, group_size)
    dtype = torch.promote_types(x.dtype, torch.float32)
    h = x.to(dtype)
    gate = None if z is None else F.silu(z.to(dtype))
    if gate is not None and not norm_before_gate:
        h = h * gate
    groups = h.unflatten(-1, (-1, g))
    h = (groups * torch.rsqrt(groups.pow(2).mean(dim=-1, keepdim=True) + eps)).flatten(-2) * weight.to(dtype)
    if gate is not None and norm_before_gate:
        h = h * gate
    return h.to(x.dtype)


def gated_rms_norm_ref(x: Tensor, z: Tensor | None, weight: Tensor, *, eps: float = 1e-5,
                       norm_before_gate: bool = False, group_size: int | None = None) -> Tensor:
    """Oracle: float64, one group at a time, the gate written as z / (1 + exp(-z)), the RMS as sqrt(sum / n)."""
    g = _check("gated_rms_norm_ref", x, z, weight, group_size)
    xd, wd = x.double(), weight.double()
    gate = None if z is None else z.double() / (1 + torch.exp(-z.double()))
    out = torch.empty_like(xd)
    for start in range(0, x.shape[-1], g):
        cols = slice(start, start + g)
        h = xd[..., cols] if gate is None or norm_before_gate else xd[..., cols] * gate[..., cols]
        rms = torch.sqrt((h * h).sum(dim=-1, keepdim=True) / g + eps)
        y = h / rms * wd[cols]
        out[..., cols] = y * gate[..., cols] if gate is not None and norm_before_gate else y
    return out.to(x.dtype)
