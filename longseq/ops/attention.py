"""Softmax attention: the explicit oracle and the fast forms (PyTorch SDPA, or the materialized score matrix).

Shapes: q: (B, H, Lq, d), k: (B, H, Lk, d), v: (B, H, Lk, dv) -> (B, H, Lq, dv).
Causality is bottom-right aligned: query i sits at key position i + (Lk - Lq), so the same call serves a full
sequence (Lq = Lk) and a chunk of queries against a cache that already holds the earlier keys.
Masks are bool, True = valid. A query that is invalid, or that sees no valid key, outputs exactly 0.

Local attention (square: q, k, v of one sequence, a query sees keys near it). ``valid: (B, L)`` says which positions
exist; the window and the chunks count *valid* positions, so a masked position takes no slot and each row computes
what its valid tokens alone give (docs/design.md §4). The fast forms pack each row's valid tokens to its front
(``ops/pack.py``), where a band of ranks is a band of positions, and unpack the outputs.
- ``sliding_window_attention``: causal, query i sees the ``window`` keys i-window+1..i (itself included: flash-attn's
  ``window_size=(window-1, 0)``); non-causal, |i - j| <= window - 1 (``window`` keys on each side counting the query,
  2·window - 1 in all, flash-attn's ``(window-1, window-1)``). Blocked "look-around": each block of queries meets
  one strip of keys covering its band, O(L·window·d), never an L x L matrix.
- ``block_local_attention``: non-overlapping chunks of ``chunk`` valid tokens, attention only inside a chunk (causal
  inside it when causal); the last chunk may be short.
Their oracles build the explicit visibility matrix from the ranks of the valid tokens and run ``masked_attention_ref``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.ops.masked_softmax import masked_softmax
from longseq.ops.pack import pack, unpack

AttentionImpl = Literal["sdpa", "math"]


def masked_attention_ref(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, *, scale: float | None = None) -> Tensor:
    """The oracle every softmax attention here is checked against: one query at a time, the explicit list of the
    keys it sees (visible: bool (B, Lq, Lk)), a hand-written softmax; a query that sees no key outputs 0."""
    b, h, lq, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    out = q.new_zeros(b, h, lq, v.shape[-1])
    for bi in range(b):
        for i in range(lq):
            keys = [j for j in range(k.shape[2]) if visible[bi, i, j]]
            if not keys:
                continue
            s = (k[bi][:, keys] @ q[bi, :, i, :, None]).squeeze(-1) * scale  # (H, n)
            p = torch.exp(s - s.max(dim=-1, keepdim=True).values)
            p = p / p.sum(dim=-1, keepdim=True)
            out[bi, :, i] = (p[..., None] * v[bi][:, keys]).sum(dim=1)
    return out


def softmax_attention_ref(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, q_valid: Tensor | None = None,
                          k_valid: Tensor | None = None, scale: float | None = None) -> Tensor:
    """The oracle of ``softmax_attention``: query i sees key j when both are valid and, if causal, j <= i + Lk - Lq."""
    b, lq, lk = q.shape[0], q.shape[2], k.shape[2]
    visible = torch.ones(b, lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        i, j = torch.arange(lq, device=q.device)[:, None], torch.arange(lk, device=q.device)[None, :]
        visible = visible & (j <= i + (lk - lq))
    if q_valid is not None:
        visible = visible & q_valid[:, :, None]
    if k_valid is not None:
        visible = visible & k_valid[:, None, :]
    return masked_attention_ref(q, k, v, visible, scale=scale)


def attention_mask(lq: int, lk: int, *, causal: bool, k_valid: Tensor | None,
                   device: torch.device) -> Tensor | None:
    """bool (B or 1, 1, Lq, Lk), True = may attend; None when every query sees every key."""
    mask = None
    if causal and lq > 1:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=device).tril(diagonal=lk - lq)[None, None]
    if k_valid is not None:
        kv = k_valid[:, None, None, :]
        mask = kv if mask is None else mask & kv
    return mask


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, q_valid: Tensor | None = None,
                      k_valid: Tensor | None = None, impl: AttentionImpl = "sdpa", scale: float | None = None,
                      dropout_p: float = 0.0) -> Tensor:
    """Fast softmax attention. ``impl="sdpa"`` calls ``F.scaled_dot_product_attention`` (fused kernels where the
    backend has them); ``impl="math"`` materializes softmax(QK^T) — the form CAB measured."""
    lq, lk = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # Without padding, a square causal problem goes to SDPA's is_causal path: fused kernels never build the mask.
    fused_causal = impl == "sdpa" and causal and lq == lk > 1 and k_valid is None
    mask = None if fused_causal else attention_mask(lq, lk, causal=causal, k_valid=k_valid, device=q.device)
    sees_a_key = None
    if k_valid is not None:
        # A row with no visible key would be softmax over nothing (NaN); let it see everything, then zero it.
        sees_a_key = mask.any(dim=-1, keepdim=True)
        mask = mask | ~sees_a_key
    if impl == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=fused_causal,
                                             scale=scale)
    elif impl == "math":
        # Materialize the L x L scores, but only twice (scores, probabilities): the scale goes into q and the mask
        # is applied in place, so the memory the benchmark sees is that of the method, not of temporaries.
        # Half-precision inputs get a float32 softmax; float64 stays float64.
        scores = ((q * scale) @ k.transpose(-2, -1)).to(torch.promote_types(q.dtype, torch.float32))
        if mask is not None:
            scores.masked_fill_(~mask, -math.inf)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = F.dropout(probs, p=dropout_p) @ v if dropout_p > 0 else probs @ v
    else:
        raise ValueError(f"softmax_attention: impl={impl!r} is not one of 'sdpa', 'math'")
    if sees_a_key is not None:
        out = out.masked_fill(~sees_a_key, 0.0)
    if q_valid is not None:
        out = out.masked_fill(~q_valid[:, None, :, None], 0.0)
    return out


# ----------------------------------------------------------------------------------------------------
# Local attention: sliding window and block-local


def _check_span(what: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}={value!r} must be a positive integer")


def _valid_ranks(q: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """-> (rank: (B, L) the index of each position among its row's valid positions, valid: (B, L) bool)."""
    b, length = q.shape[0], q.shape[2]
    if valid is None:
        valid = torch.ones(b, length, dtype=torch.bool, device=q.device)
    return valid.long().cumsum(dim=1) - 1, valid


def _visible_by_rank(q: Tensor, valid: Tensor | None, sees: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """bool (B, L, L): query i sees key j when both are valid and ``sees(rank_i, rank_j)``."""
    rank, valid = _valid_ranks(q, valid)
    return sees(rank[:, :, None], rank[:, None, :]) & valid[:, :, None] & valid[:, None, :]


def sliding_window_attention_ref(q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool = True,
                                 valid: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Oracle: the dense banded mask over valid-token ranks. q, k: (B, H, L, d), v: (B, H, L, dv)."""
    _check_span("sliding_window_attention: window", window)

    def sees(ri: Tensor, rj: Tensor) -> Tensor:
        return (ri - rj < window) & (ri - rj >= 0 if causal else rj - ri < window)

    return masked_attention_ref(q, k, v, _visible_by_rank(q, valid, sees), scale=scale)


def block_local_attention_ref(q: Tensor, k: Tensor, v: Tensor, *, chunk: int, causal: bool = True,
                              valid: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Oracle: the dense block-diagonal mask over valid-token ranks. q, k: (B, H, L, d), v: (B, H, L, dv)."""
    _check_span("block_local_attention: chunk", chunk)

    def sees(ri: Tensor, rj: Tensor) -> Tensor:
        same = ri // chunk == rj // chunk
        return same & (rj <= ri) if causal else same

    return masked_attention_ref(q, k, v, _visible_by_rank(q, valid, sees), scale=scale)


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Blocked scores (..., n, c, d) x (..., n, s, d) -> (..., n, c, s); half precision is softmaxed in float32."""
    return torch.einsum("...ud,...jd->...uj", q * scale, k).to(torch.promote_types(q.dtype, torch.float32))


def _on_packed(attend: Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor], q: Tensor, k: Tensor, v: Tensor,
               valid: Tensor | None) -> Tensor:
    """Run ``attend(q, k, v, k_valid)`` on positions, with each row's valid tokens packed to its front so that a
    position is a valid-token rank; outputs unpacked (0 at masked positions)."""
    if q.shape[2] == 0:  # no blocks to cut
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    if valid is None:
        return attend(q, k, v, None)
    count = valid.sum(dim=1, keepdim=True)
    k_valid = torch.arange(valid.shape[1], device=valid.device)[None, :] < count
    out = attend(pack(q, valid, dim=2), pack(k, valid, dim=2), pack(v, valid, dim=2), k_valid)
    return unpack(out, valid, dim=2)


def _blocks(t: Tensor, n: int, c: int) -> Tensor:
    """(B, H, L, e) -> (B, H, n, c, e), zero-padded at the end to n·c positions."""
    return F.pad(t, (0, 0, 0, n * c - t.shape[2])).unflatten(2, (n, c))


def _band_attention(q: Tensor, k: Tensor, v: Tensor, k_valid: Tensor | None, *, left: int, right: int, block: int,
                    scale: float) -> Tensor:
    """Query i sees the keys at positions i-left..i+right (that exist and are valid). Queries in blocks of c; block
    n meets the strip of keys [n·c - left, n·c + c + right), a strided view of the padded keys; the exact band is a
    (c, c + left + right) mask shared by all blocks."""
    b, _, length, _ = q.shape
    c = min(block, length)
    n = -(-length // c)
    span = c + left + right
    pad = (left, n * c - length + right)

    def strips(t: Tensor) -> Tensor:  # (B, H, L, e) -> (B, H, n, span, e)
        return F.pad(t, (0, 0, *pad)).unfold(2, span, c).transpose(-1, -2)

    exists = torch.ones(b, length, dtype=torch.bool, device=q.device) if k_valid is None else k_valid
    key_ok = F.pad(exists, pad).unfold(1, span, c)  # (B, n, span); padding is never a key
    u, j = torch.arange(c, device=q.device)[:, None], torch.arange(span, device=q.device)[None, :]
    band = (j >= u) & (j <= u + left + right)  # key strip index j is position n·c + j - left
    visible = band & key_ok[:, None, :, None, :]
    out = masked_softmax(_scores(_blocks(q, n, c), strips(k), scale), visible).to(v.dtype) @ strips(v)
    return out.flatten(2, 3)[:, :, :length]


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool = True,
                             valid: Tensor | None = None, scale: float | None = None,
                             block_size: int | None = None) -> Tensor:
    """Sliding-window softmax attention, blocked look-around. q, k: (B, H, L, d), v: (B, H, L, dv), valid: bool
    (B, L) or None -> (B, H, L, dv), 0 at masked positions. ``block_size`` (default ``window``): queries per block;
    each block meets block_size + window - 1 keys (causal) or block_size + 2·(window - 1) (non-causal)."""
    _check_span("sliding_window_attention: window", window)
    block = window if block_size is None else block_size
    _check_span("sliding_window_attention: block_size", block)
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def attend(q: Tensor, k: Tensor, v: Tensor, k_valid: Tensor | None) -> Tensor:
        return _band_attention(q, k, v, k_valid, left=window - 1, right=0 if causal else window - 1, block=block,
                               scale=scale)

    return _on_packed(attend, q, k, v, valid)


BlockAttend = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def chunked_attention(attend: BlockAttend, q: Tensor, k: Tensor, v: Tensor, *, chunk: int, causal: bool,
                      valid: Tensor | None) -> Tensor:
    """The sequence cut into chunks of ``chunk`` valid tokens (the last may be short), ``attend`` run on all chunks
    at once: ``attend(q, k, v, visible)`` with q, k: (B, H, n, c, d), v: (B, H, n, c, dv) and visible: bool
    (B, 1, n, c, c) (the key exists; j <= i inside the chunk when causal), c = min(chunk, L) -> (B, H, n, c, dv).
    q, k: (B, H, L, d), v: (B, H, L, dv), valid: bool (B, L) or None -> (B, H, L, dv), 0 at masked positions."""
    _check_span("chunked attention: chunk", chunk)

    def attend_packed(q: Tensor, k: Tensor, v: Tensor, k_valid: Tensor | None) -> Tensor:
        b, _, length, _ = q.shape
        c = min(chunk, length)
        n = -(-length // c)
        exists = torch.ones(b, length, dtype=torch.bool, device=q.device) if k_valid is None else k_valid
        visible = F.pad(exists, (0, n * c - length)).unflatten(1, (n, c))[:, None, :, None, :]  # (B, 1, n, 1, c)
        if causal:
            visible = visible & torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        out = attend(_blocks(q, n, c), _blocks(k, n, c), _blocks(v, n, c), visible)
        return out.flatten(2, 3)[:, :, :length]

    return _on_packed(attend_packed, q, k, v, valid)


def block_local_attention(q: Tensor, k: Tensor, v: Tensor, *, chunk: int, causal: bool = True,
                          valid: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Block-local softmax attention: the sequence cut into chunks of ``chunk`` valid tokens, one (c x c) attention
    per chunk. q, k: (B, H, L, d), v: (B, H, L, dv), valid: bool (B, L) or None -> (B, H, L, dv), 0 at masked
    positions."""
    _check_span("block_local_attention: chunk", chunk)
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def attend(q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
        return masked_softmax(_scores(q, k, scale), visible).to(v.dtype) @ v

    return chunked_attention(attend, q, k, v, chunk=chunk, causal=causal, valid=valid)
