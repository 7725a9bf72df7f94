"""The regularizers of an explicit long-convolution kernel (Fu et al., 2023, "Simple Hardware-Efficient Long
Convolutions"): they make an over-parameterised kernel (one free weight per lag and channel) behave as a smooth,
sparse one. Kernels are (H, L): one filter per channel, lag along the last axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def squash(k: Tensor, lam: float) -> Tensor:
    """Soft-threshold: sign(k) max(|k| - lam, 0), which sets the small weights to exactly zero (sparsity)."""
    if lam < 0:
        raise ValueError(f"squash: lam={lam} must be >= 0")
    return torch.sign(k) * F.relu(k.abs() - lam)


def smooth(k: Tensor, window: int) -> Tensor:
    """Average over ``window`` (odd) neighbouring lags, stride 1, zero-padded at both ends ("same" length): the
    reference's AvgPool1d with count_include_pad."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smooth: window={window} must be an odd positive integer")
    return F.avg_pool1d(k[None], kernel_size=window, stride=1, padding=window // 2)[0]
