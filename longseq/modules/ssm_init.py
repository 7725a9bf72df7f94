"""Initialisations the state-space mixers share: time steps drawn log-uniformly, and the biases that produce them.

S4, S4D, Mamba and Mamba-2 all start their discretisation step dt log-uniform in [dt_min, dt_max] (1e-3 to 0.1 by
default), so that channels cover time scales from ~10 to ~1000 tokens. Mamba and Mamba-2 produce dt through a
softplus of a learned bias, initialised to the softplus inverse of such a draw.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def log_uniform(n: int, low: float, high: float, *, floor: float = 0.0) -> Tensor:
    """(n,) float32 drawn log-uniformly in [low, high] (torch's global RNG), then clamped to at least ``floor``."""
    if not 0 < low <= high:
        raise ValueError(f"log_uniform: need 0 < low <= high, got low={low!r}, high={high!r}")
    u = torch.rand(n)
    return torch.exp(u * (math.log(high) - math.log(low)) + math.log(low)).clamp(min=floor)


def softplus_inverse(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0: y + log(1 - exp(-y)), written with expm1 for accuracy at small y."""
    return y + torch.log(-torch.expm1(-y))


def dt_bias(n: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """(n,) the bias b such that softplus(b) is a log-uniform dt in [dt_min, dt_max], at least ``floor``."""
    return softplus_inverse(log_uniform(n, dt_min, dt_max, floor=floor))
