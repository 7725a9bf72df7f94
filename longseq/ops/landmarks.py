"""Segment means: m landmarks summarising a sequence (Nyströmformer's landmarks, LARA's proposals).

A row's valid tokens are cut, in order, into m contiguous segments and each landmark is the mean of one segment.
When L is not divisible by m the rule of CAB and LARA applies: with s = L // m and r = L % m, the first m - r
segments hold s tokens and the last r hold s + 1. L counts the row's *valid* tokens only, so padding (at either end
or in holes) is inert: a padded row has the landmarks of its valid tokens alone. With fewer valid tokens than
landmarks (s = 0) the first m - L segments are empty: each token is its own landmark (as CAB's LARA does for a short
sequence) and the empty ones are flagged invalid for the caller to exclude; their mean is 0.

Shapes: x: (B, ..., L, d) with batch first, valid: bool (B, L) (True = valid; None = all) -> means (B, ..., m, d),
seg_valid: bool (B, m). The means are a linear map of x (an averaging matrix), so gradients are exact.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(fn: str, x: Tensor, n_segments: int, valid: Tensor | None) -> None:
    if not isinstance(n_segments, int) or n_segments <= 0:
        raise ValueError(f"{fn}: n_segments={n_segments!r} must be a positive integer")
    if x.dim() < 3:
        raise ValueError(f"{fn}: x must have shape (B, ..., L, d), got {tuple(x.shape)}")
    if valid is not None and (valid.dtype != torch.bool or valid.shape != (x.shape[0], x.shape[-2])):
        raise ValueError(f"{fn}: valid must be bool of shape (B, L) = {(x.shape[0], x.shape[-2])}, "
                         f"got {valid.dtype} {tuple(valid.shape)}")


def segment_ids(valid: Tensor, n_segments: int) -> Tensor:
    """valid: bool (B, L) -> (B, L) int64: the segment of each valid token among its row's valid tokens (see the
    module docstring), -1 at masked positions."""
    n = valid.sum(dim=1, keepdim=True)  # (B, 1) valid tokens per row
    rank = valid.long().cumsum(dim=1) - 1
    size, longer = n // n_segments, n % n_segments
    n_short = n_segments - longer
    boundary = n_short * size  # the first token of the first long segment
    seg = torch.where(rank < boundary, rank // size.clamp(min=1), n_short + (rank - boundary) // (size + 1))
    return seg.masked_fill(~valid, -1)


def segment_means(x: Tensor, n_segments: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """-> (means: (B, ..., m, d), seg_valid: bool (B, m)); an empty segment's mean is 0."""
    _check("segment_means", x, n_segments, valid)
    b, length = x.shape[0], x.shape[-2]
    if valid is None:
        valid = torch.ones(b, length, dtype=torch.bool, device=x.device)
    else:
        x = x.masked_fill(~valid.view(b, *[1] * (x.dim() - 3), length, 1), 0.0)  # garbage cannot reach a gradient
    member = segment_ids(valid, n_segments)[:, None, :] == torch.arange(n_segments, device=x.device)[:, None]
    counts = member.sum(dim=-1)  # (B, m)
    average = member.to(x.dtype) / counts.clamp(min=1)[..., None].to(x.dtype)  # (B, m, L)
    return average.view(b, *[1] * (x.dim() - 3), n_segments, length) @ x, counts > 0


def segment_means_ref(x: Tensor, n_segments: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Oracle: per row, its valid tokens split by the explicit list of segment sizes, each averaged."""
    _check("segment_means_ref", x, n_segments, valid)
    b, length, d = x.shape[0], x.shape[-2], x.shape[-1]
    means = x.new_zeros(*x.shape[:-2], n_segments, d)
    seg_valid = torch.zeros(b, n_segments, dtype=torch.bool, device=x.device)
    for row in range(b):
        tokens = x[row][..., valid[row], :] if valid is not None else x[row]
        n = tokens.shape[-2] if valid is not None else length
        sizes = [n // n_segments] * (n_segments - n % n_segments) + [n // n_segments + 1] * (n % n_segments)
        start = 0
        for c, size in enumerate(sizes):
            if size:
                means[row, ..., c, :] = tokens[..., start:start + size, :].mean(dim=-2)
                seg_valid[row, c] = True
            start += size
    return means, seg_valid
