"""SGConv's multi-scale kernel (Li et al., ICLR 2023): a long kernel from a few short sub-kernels.

Sub-kernel i (i = 0 .. S-1), each (H, d), is stretched by linear interpolation to d·2^max(0, i-1) lags and
weighted by decay^-i, and the stretched pieces are concatenated: lengths d, d, 2d, 4d, ... for a total of
d·2^(S-1) lags. Each scale is twice as long as the one before and counts 1/decay as much, the paper's two
principles for a long kernel: sub-linear parameters (S·d per channel, S = 1 + ceil(log2(max_len / d))) and a
decaying weight at long range. Interpolation is PyTorch's ``align_corners=False`` (the reference's), or "nearest".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

INTERPOLATIONS = ("linear", "nearest")


def n_scales(max_len: int, kernel_dim: int) -> int:
    """S = 1 + ceil(log2(max_len / d)): the fewest scales whose concatenation covers max_len lags."""
    return 1 + max(0, math.ceil(math.log2(max_len / kernel_dim)))


def scale_factor(i: int) -> int:
    """How much scale i is stretched: 1, 1, 2, 4, ..."""
    return 2 ** max(0, i - 1)


def multiscale_kernel(subkernels: list[Tensor], length: int, *, decay: float = 2.0,
                      interpolation: str = "linear") -> Tensor:
    """subkernels: S tensors (H, d) -> the first ``length`` lags of the concatenated kernel: (H, length), zeros
    past the last scale. Only the scales that reach into the first ``length`` lags are computed."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"multiscale_kernel: interpolation={interpolation!r} is not allowed; allowed: "
                         f"{', '.join(INTERPOLATIONS)}")
    pieces, total = [], 0
    for i, w in enumerate(subkernels):
        if total >= length:
            break
        factor = scale_factor(i)
        if factor == 1:
            piece = w
        else:
            piece = F.interpolate(w[None], scale_factor=factor, mode=interpolation,
                                  **({"align_corners": False} if interpolation == "linear" else {}))[0]
        pieces.append(piece * decay ** -i)
        total += piece.shape[-1]
    kernel = torch.cat(pieces, dim=-1)[:, :length]
    return F.pad(kernel, (0, length - kernel.shape[-1]))


def multiscale_kernel_ref(subkernels: list[Tensor], length: int, *, decay: float = 2.0,
                          interpolation: str = "linear") -> Tensor:
    """Oracle: every lag written out by the interpolation formula (``align_corners=False``: output j of a
    stretch by s samples the input at (j + 1/2)/s - 1/2, clamped to [0, d-1]; "nearest" takes floor(j/s))."""
    lags: list[Tensor] = []
    for i, w in enumerate(subkernels):
        d, s = w.shape[-1], scale_factor(i)
        for j in range(d * s):
            if interpolation == "nearest":
                value = w[:, j // s]
            else:
                src = min(max((j + 0.5) / s - 0.5, 0.0), d - 1.0)
                lo = math.floor(src)
                hi, frac = min(lo + 1, d - 1), src - lo
                value = (1 - frac) * w[:, lo] + frac * w[:, hi]
            lags.append(value * decay ** -i)
    kernel = torch.stack(lags, dim=-1)[:, :length]
    return F.pad(kernel, (0, length - kernel.shape[-1]))
