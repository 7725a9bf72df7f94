"""The precision the ops compute in: float32 at least (half-precision inputs are promoted: sums of decays and FFTs
lose too much in 8 bits of mantissa), float64 when any input is float64."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch
from torch import Tensor

P = ParamSpec("P")
R = TypeVar("R")


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32 promoted with the dtype of every tensor given (None entries ignored)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def without_autocast(op: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run ``op`` with ``torch.autocast`` disabled on its tensors' device. Inside an op that computes in
    ``compute_dtype``, an enclosing autocast would lower its matmuls back to half precision (sums over a stream,
    kernels), or hand half-precision results to functions that refuse them (``torch.complex``)."""

    @functools.wraps(op)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return op(*args, **kwargs)

    return run
