"""Sparse modular activation (SeqBoat, Ren et al., NeurIPS 2023): the router's hard decision, the compression of
the activated tokens into a shorter sequence and back, and the local attention run on the compressed sequence.

- ``route``: a tempered softmax over two logits per token, p = softmax(u / tau); a token is activated when p_1 is
  the larger (ties go to "not activated", the first maximum) and it is valid; its gain is p_max on activated tokens
  and 0 elsewhere. The decision is piecewise constant: the router's parameters get their gradient only through the
  gain (no Gumbel noise, no straight-through estimator).
- ``compress``: each row's activated tokens moved to its front, in order (``ops/pack.py``), truncated to the
  longest row's count Lc; ``valid_c`` flags the slots a shorter row leaves empty. ``extract`` is its inverse on
  the activated tokens and puts 0 elsewhere.
- ``local_biased_attention``: slot i of the compressed sequence sees the valid slots i-left..i+right; the score of a
  key gets ``bias(pos_j - pos_i)`` where ``pos`` are the slots' *original* positions, so the window counts
  activated tokens (w of them may reach arbitrarily far back: SeqBoat's "infinite span") while the bias sees true
  distances. Computed in look-around blocks (as ``ops/attention.py``'s sliding window): each block of c query slots
  meets one strip of c + left + right key slots, O(Lc·(c + left + right)·d), never an Lc x Lc matrix. The scores
  go through ``ops/biased_attention.py`` (softmax, or MEGA's length-normalised relu² / laplace).

Shapes: x: (B, L, ...) with batch first, act / valid: bool (B, L). Every fast form has an explicit ``*_ref``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.ops.biased_attention import Kernel, biased_attention, biased_attention_ref
from longseq.ops.pack import pack, unpack
from longseq.ops.precision import compute_dtype

BiasFn = Callable[[Tensor], Tensor]  # int offsets (key position - query position) -> float bias of the same shape

# ----------------------------------------------------------------------------------------------------
# The router


def route(logits: Tensor, temperature: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """logits: (B, L, 2), temperature: () > 0, valid: bool (B, L) or None -> (act: bool (B, L), gain: (B, L) in
    logits' dtype). The softmax runs in float32 at least, so that a half-precision layer decides on float32
    probabilities."""
    p = torch.softmax(logits.to(compute_dtype(logits)) / temperature, dim=-1)
    p_max, choice = p.max(dim=-1)  # the first maximum on a tie: index 0, "not activated"
    act = choice == 1
    if valid is not None:
        act = act & valid
    return act, p_max.masked_fill(~act, 0.0).to(logits.dtype)


def route_ref(logits: Tensor, temperature: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Oracle of ``route``: token by token, a hand-written two-way softmax and an explicit comparison."""
    b, length, _ = logits.shape
    act = torch.zeros(b, length, dtype=torch.bool, device=logits.device)
    gain = [[logits.new_zeros(()) for _ in range(length)] for _ in range(b)]
    for i in range(b):
        for t in range(length):
            z = logits[i, t] / temperature
            e = torch.exp(z - z.max())
            p = e / e.sum()
            if p[1] > p[0] and (valid is None or valid[i, t]):
                act[i, t] = True
                gain[i][t] = p[1]
    return act, torch.stack([torch.stack(row) for row in gain]).to(logits.dtype)


# ----------------------------------------------------------------------------------------------------
# Compress and extract


def compress(x: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
    """x: (B, L, ...), act: bool (B, L) -> (x_c: (B, Lc, ...) each row's activated tokens first, in order, zeros
    after them; valid_c: bool (B, Lc)), Lc = the largest number of activated tokens in a row (0 when none is)."""
    count = act.sum(dim=1)
    lc = int(count.max()) if count.numel() else 0
    valid_c = torch.arange(lc, device=act.device)[None, :] < count[:, None]
    return pack(x, act)[:, :lc], valid_c


def extract(x_c: Tensor, act: Tensor) -> Tensor:
    """The inverse of ``compress`` on the activated tokens: x_c: (B, Lc, ...) -> (B, L, ...), the activated token of
    rank r in its row gets x_c[:, r], every other token 0."""
    b, length = act.shape
    filler = x_c.new_zeros(b, length - x_c.shape[1], *x_c.shape[2:])
    return unpack(torch.cat([x_c, filler], dim=1), act)


def compress_ref(x: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
    """Oracle of ``compress``: row by row, the activated tokens selected and zero-padded to the longest row."""
    rows = [x[i][act[i]] for i in range(x.shape[0])]
    lc = max((r.shape[0] for r in rows), default=0)
    out = x.new_zeros(x.shape[0], lc, *x.shape[2:])
    valid_c = torch.zeros(x.shape[0], lc, dtype=torch.bool, device=x.device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        valid_c[i, : r.shape[0]] = True
    return out, valid_c


def extract_ref(x_c: Tensor, act: Tensor) -> Tensor:
    """Oracle of ``extract``: token by token, the r-th activated token of a row takes slot r."""
    out = x_c.new_zeros(*act.shape, *x_c.shape[2:])
    for i in range(act.shape[0]):
        r = 0
        for t in range(act.shape[1]):
            if act[i, t]:
                out[i, t] = x_c[i, r]
                r += 1
    return out


# ----------------------------------------------------------------------------------------------------
# Local attention on the compressed sequence


def _check_band(left: int, right: int, block: int) -> None:
    for what, value, least in (("left", left, 0), ("right", right, 0), ("block", block, 1)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"local_biased_attention: {what}={value!r} must be an integer >= {least}")


def local_biased_attention_ref(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, valid: Tensor, *, left: int,
                               right: int, kernel: Kernel = "softmax", bias: BiasFn | None = None,
                               scale: float | None = None) -> Tensor:
    """Oracle: the explicit (B, L, L) visibility (slot j in i-left..i+right, both valid) and offsets, through
    ``biased_attention_ref``. q, k: (B, L, d), v: (B, L, dv), positions: (B, L) int, valid: bool (B, L)."""
    _check_band(left, right, 1)
    i, j = torch.arange(q.shape[1], device=q.device)[:, None], torch.arange(q.shape[1], device=q.device)[None, :]
    visible = (j >= i - left) & (j <= i + right) & valid[:, :, None] & valid[:, None, :]
    offsets = positions[:, None, :] - positions[:, :, None]
    return biased_attention_ref(q, k, v, visible, bias=None if bias is None else bias(offsets), kernel=kernel,
                                scale=scale)


def local_biased_attention(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, valid: Tensor, *, left: int,
                           right: int, kernel: Kernel = "softmax", bias: BiasFn | None = None,
                           scale: float | None = None, block: int | None = None) -> Tensor:
    """q, k: (B, L, d), v: (B, L, dv), positions: (B, L) int (each slot's original position), valid: bool (B, L)
    -> (B, L, dv); a slot that is invalid or sees no key outputs 0. ``block`` (default max(left, right, 1)): query
    slots per block, each meeting block + left + right key slots."""
    c = max(left, right, 1) if block is None else block
    _check_band(left, right, c)
    b, length, _ = q.shape
    if length == 0:
        return q.new_zeros(b, 0, v.shape[-1])
    c = min(c, length)
    n = -(-length // c)
    span = c + left + right
    pad = (left, n * c - length + right)

    def strips(t: Tensor) -> Tensor:  # (B, L, ...) -> (B, n, span, ...): key slot n·c + j - left at strip index j
        t = F.pad(t.movedim(1, -1), pad).unfold(-1, span, c)  # (B, ..., n, span)
        return t.movedim(-2, 1).movedim(-1, 2)

    def blocks(t: Tensor) -> Tensor:  # (B, L, ...) -> (B, n, c, ...)
        return F.pad(t.movedim(1, -1), (0, n * c - length)).movedim(-1, 1).unflatten(1, (n, c))

    u, j = torch.arange(c, device=q.device)[:, None], torch.arange(span, device=q.device)[None, :]
    band = (j >= u) & (j <= u + left + right)
    visible = band & strips(valid)[:, :, None, :] & blocks(valid)[..., None]  # (B, n, c, span)
    offsets = strips(positions)[:, :, None, :] - blocks(positions)[..., None]
    out = biased_attention(blocks(q), strips(k), strips(v), visible, bias=None if bias is None else bias(offsets),
                           kernel=kernel, scale=scale)
    return out.flatten(1, 2)[:, :length]
