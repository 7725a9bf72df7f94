"""Two causal passes make one non-causal mixer: y = forward(x) + reverse(backward(reverse(x))).

Mamba and Mamba-2 are causal by construction; their non-causal form (Vision Mamba, Caduceus) runs a second
direction with its own parameters over the reversed sequence and adds the outputs. Reversing a whole row, padding
included, is exact for passes in which a masked position is a no-op (dt = 0 in a scan, skipped by the short
convolution): the valid tokens meet in reverse order whatever the padding's place.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Pass = Callable[[Tensor, Tensor | None], Tensor]


def two_way(forward: Pass, backward: Pass, x: Tensor, mask: Tensor | None) -> Tensor:
    """x: (B, L, D), mask: bool (B, L) or None; each pass maps (x, mask) -> (B, L, D)."""
    flipped = None if mask is None else mask.flip(1)
    return forward(x, mask) + backward(x.flip(1), flipped).flip(1)
