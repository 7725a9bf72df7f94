"""Arguments of Mamba-1's selective scan for the op's oracle tests (the plain paths and the compiled kernel alike)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

F64 = torch.float64
OPTIONAL = ("D", "z", "delta_bias", "initial_state")


def selective_scan_inputs(*, batch: int, d: int, n: int, length: int, groups: int | None = None,
                          softplus: bool = False, seed: int = 0, dtype: torch.dtype = F64) -> dict[str, torch.Tensor]:
    """Every tensor argument of ``selective_scan`` as a leaf with requires_grad: u, delta, z: (batch, d, length),
    A: (d, n) negative, B, C: (batch, n, length), or (batch, groups, n, length) when ``groups`` is set, D,
    delta_bias: (d,), initial_state: (batch, d, n). Drawn in float64 from ``seed``, then cast to ``dtype``. Without
    softplus, delta is positive (a step size, as after the caller's softplus)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=F64)

    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    delta = randn(batch, d, length) if softplus else torch.rand(batch, d, length, generator=g, dtype=F64) * 0.5 + 0.01
    tensors = {"u": randn(batch, d, length), "delta": delta, "A": -torch.rand(d, n, generator=g, dtype=F64) - 0.1,
               "B": randn(*bc), "C": randn(*bc), "D": randn(d), "z": randn(batch, d, length),
               "delta_bias": randn(d) * 0.3, "initial_state": randn(batch, d, n)}
    return {k: v.to(dtype).requires_grad_() for k, v in tensors.items()}


def call_scan(fn: Callable[..., Any], t: dict[str, torch.Tensor], use: tuple[str, ...], **kwargs: Any) -> Any:
    """``fn`` (a selective scan) on ``t``'s required arguments and the optional ones named in ``use``; (y, last)."""
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], **{k: t[k] for k in use}, return_last_state=True, **kwargs)


def scan_leaves(t: dict[str, torch.Tensor], use: tuple[str, ...]) -> tuple[list[torch.Tensor], list[str]]:
    """The tensors a call with ``use`` differentiates, and their names."""
    names = ["u", "delta", "A", "B", "C", *use]
    return [t[k] for k in names], names
