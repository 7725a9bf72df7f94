"""Softmax and logsumexp over the valid entries only, safe when none is valid.

Padding must be inert (docs/design.md §4): a masked entry gets probability exactly 0 and no gradient, and a row
with no valid entry at all (a padded batch row, an empty memory) gives probabilities 0 and a finite gradient — not
the NaN of a softmax over -inf only. The trick is the same in both functions: masked entries become -inf, a row
without any valid entry is replaced by zeros before the reduction (so its forward and backward are finite) and its
result is overwritten after it; masked_fill's backward then gives the replaced entries zero gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _fill(logits: Tensor, valid: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """-> (logits with masked entries at -inf and empty rows at 0, any: bool with ``dim`` kept)."""
    valid = valid.expand_as(logits)
    anything = valid.any(dim=dim, keepdim=True)
    return logits.masked_fill(~valid, -math.inf).masked_fill(~anything, 0.0), anything


def masked_softmax(logits: Tensor, valid: Tensor | None, dim: int = -1) -> Tensor:
    """softmax(logits) over ``dim`` restricted to ``valid`` (bool, broadcastable to logits; None = all valid).
    Masked entries get exactly 0; a row with no valid entry is all 0."""
    if valid is None:
        return torch.softmax(logits, dim=dim)
    filled, anything = _fill(logits, valid, dim)
    return torch.softmax(filled, dim=dim).masked_fill(~anything, 0.0)


def masked_logsumexp(x: Tensor, valid: Tensor | None, dim: int = -1) -> Tensor:
    """logsumexp over ``dim`` of the valid entries (``dim`` removed); -inf for a row with no valid entry, reached
    without a NaN in the gradient."""
    if valid is None:
        return torch.logsumexp(x, dim=dim)
    filled, anything = _fill(x, valid, dim)
    return torch.logsumexp(filled, dim=dim).masked_fill(~anything.squeeze(dim), -math.inf)
