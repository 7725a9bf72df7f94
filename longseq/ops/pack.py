"""Packing each row's valid tokens to its front, and back: how position-based ops honour masks with holes.

A convolution counts positions: a padded token inside a sequence would still separate its neighbours by one step.
The contract (docs/design.md §4) asks that each row compute what its valid tokens give alone, so a convolution
over a masked batch runs on the packed rows — valid tokens first, in order, zeros after — and its outputs are
unpacked to the valid positions (0 elsewhere). Recurrences don't need this: a padded step with no input and no
decay is already a no-op.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pack_order(mask: Tensor) -> Tensor:
    """mask: bool (B, L), True = valid -> (B, L) int64: the positions to gather so that each row's valid tokens
    come first, in order (a stable sort), then its padded positions."""
    return torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)


def pack(x: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """x with batch in dim 0 and length in ``dim`` -> the same shape, each row's valid tokens moved to its front
    and its padded positions zeroed (a NaN there cannot reach a valid output or a gradient)."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = mask.shape
    zeroed = x.masked_fill(~mask.view(shape), 0.0)
    return zeroed.gather(dim, pack_order(mask).view(shape).expand_as(x))


def unpack(y: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """The inverse of ``pack`` at the valid positions: token t of a row is its rank(t)-th valid token, so its output
    sits at packed slot rank(t). Padded positions get 0."""
    shape = [1] * y.dim()
    shape[0], shape[dim] = mask.shape
    rank = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return y.gather(dim, rank.view(shape).expand_as(y)).masked_fill(~mask.view(shape), 0.0)


def pack_ref(x: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Oracle of ``pack``: row by row, the valid tokens selected and zero-padded at the end."""
    x = x.movedim(dim, 1)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        valid = x[b][mask[b]]
        out[b, : valid.shape[0]] = valid
    return out.movedim(1, dim)
