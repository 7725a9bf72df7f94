"""Rotary position embedding (RoPE, Su et al. 2021), as pure functions.

Half-split convention (GPT-NeoX): the first and second halves of a head's channels form the (real, imaginary)
pairs rotated by angle ``position * base^(-2i/d)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_cos_sin(positions: Tensor, dim: int, *, base: float = 10000.0,
                   dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """positions: (B, L) integer -> cos, sin: (B, 1, L, dim/2) in ``dtype`` (float32 at least: angles of positions
    in the tens of thousands lose their phase in half precision)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=compute) / dim)
    angles = positions.to(compute)[:, None, :, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, L, d) with d even; cos, sin: (B, 1, L, d/2). Returns the rotated x in x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1) if x.dtype != torch.float64 else x.chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def apply_rotary_ref(x: Tensor, positions: Tensor, *, base: float = 10000.0) -> Tensor:
    """Oracle: each channel pair (x_i, x_{i+d/2}) as a complex number multiplied by exp(i * pos * theta_i)."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    out = torch.empty_like(x, dtype=torch.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[2]):
            z = torch.complex(x[b, :, t, : d // 2].double(), x[b, :, t, d // 2:].double())
            z = z * torch.exp(1j * float(positions[b, t]) * theta)
            out[b, :, t, : d // 2], out[b, :, t, d // 2:] = z.real, z.imag
    return out.to(x.dtype)


def token_positions(mask: Tensor | None, batch: int, length: int, device: torch.device,
                    start: Tensor | None = None) -> Tensor:
    """(B, L) position of each token = number of valid tokens before it (plus ``start``: (B,))."""
    if mask is None:
        pos = torch.arange(length, device=device).expand(batch, length)
    else:
        pos = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return pos if start is None else pos + start[:, None]


def rotate_queries_keys(q: Tensor, k: Tensor, positions: Tensor, *, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """q: (B, H, Lq, d), k: (B, H, Lk, d) at the same positions: (B or 1, L) -> both rotated (q's dtype)."""
    cos, sin = rotary_cos_sin(positions, q.shape[-1], base=base, dtype=q.dtype)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
