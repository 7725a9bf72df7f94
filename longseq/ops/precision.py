"""The precision the ops compute in: float32 at least (half-precision inputs are promoted: sums of decays and FFTs
lose too much in 8 bits of mantissa), float64 when any input is float64."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32 promoted with the dtype of every tensor given (None entries ignored)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype
