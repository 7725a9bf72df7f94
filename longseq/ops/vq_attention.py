"""Attention over vector-quantised keys (Transformer-VQ, Lingle 2023): dense oracle, linear-time causal form,
aggregated (non-causal, cross) form, the one-token update, and LongVQ's non-causal form with a local window.

Every key is a codebook row, k̂_j = C[z_j] (in value), so the keys of one code are equal and their softmax terms
share one score: sum_{j: z_j=s} e^{q·k̂_j} v_j = e^{q·C_s + log n_s} m_s with n_s the count and m_s the mean value of
the code's keys. Old keys can thus be kept as a per-code aggregate — (n_s, mean key, mean value) — of size
independent of the length, and attention over it is exactly attention over the quantised keys.

**Causal form** (``vq_attention_chunked``, block length W, positions counted over *valid* tokens): a query in block b
sees its *recent set* — the keys of blocks b-1 and b, individually, causal inside block b, with an optional additive
bias ``recent_bias`` indexed by the offset i - j (0 <= i - j < 2W) — and the *aggregated cache* of all keys of blocks
<= b-2, scored q·k̄_s + log n_s (-inf where n_s = 0). One joint softmax over both (its normaliser taken over the
recent and cached scores together, before the values are multiplied); after block b the cache absorbs block b-1. The
parallel form computes every block at once from prefix sums of per-block code histograms, O(L·(2W + S)·d), never an
L x L matrix. Equal to dense causal softmax attention over the quantised keys for every W (block-length invariance).

**Aggregated form** (``code_aggregate`` + ``aggregate_attention``; ``vq_attention(causal=False)``): non-causal self
and cross attention need no recent set: every valid key is aggregated by code, O(L·S·d).

**Non-causal local form** (``vq_attention_local``, LongVQ, Liu et al. 2024; its oracle ``vq_attention_local_ref``):
the two-sided counterpart of the causal form. A query in block b sees the keys of blocks b-1, b and b+1 individually,
with an optional bias ``local_bias`` indexed by the offset i - j + 2W - 1 (-(2W-1) <= i - j <= 2W-1), and every
other key of the sequence through the per-code aggregate of blocks <= b-2 and >= b+2, one joint softmax over both.
The aggregate of each block is a prefix sum plus a suffix sum of per-block code histograms (sums, not a total minus
the local blocks, so that no large sums cancel in float32): O(L·(3W + S)·d), never an L x L matrix.

**Gradients** (the quantiser's straight-through estimator, k̂ = sg(C[z]) + k - sg(k), decides what reaches the keys):
a recent (or local) key enters its score individually and gets the dense form's gradient. An aggregated code's key is
k̄_s = C_s + mean_{j: z_j = s}(k̂_j - sg(k̂_j)): exactly C_s in value (the added terms are exact zeros), and each of
the code's keys receives 1/n_s of the gradient of the code's score. The dense form would give each key a share that
depends on its own value v_j, which no aggregate can keep; sharing equally is the straight-through estimate through
the aggregate, and it lets the keys learn in the patterns that have no recent set (Transformer-VQ's own cache scores
use C and pass nothing to the keys). ``vq_attention_ref`` and ``vq_attention_local_ref`` spell out exactly this
gradient, so the fast forms are checked against them in values and in gradients w.r.t. every input.

**Masks** follow ``ops/pack.py``: each row's valid tokens are packed to its front, so a block is W consecutive valid
tokens, a masked token takes no slot, is never counted in a cache, and its output is 0; a query that sees no key
outputs 0. Computations run in float32 at least (float64 stays float64); outputs and states come back in that dtype.

**State** (``VQCacheState``, for streaming; chunk sizes arbitrary, rows advancing by different numbers of valid
tokens): the cache of every token older than the recent set of the next token — ``counts`` (S), mean ``keys``
(S x dk), mean ``values`` (S x dv) per head — and the recent tokens themselves, oldest first and left-aligned in
``recent_k``/``recent_v``/``recent_z``: with ``seen`` valid tokens so far, the next token is in block seen // W and
the row holds the ranks [max(0, (seen // W - 1)·W), seen), at most 2W - 1 tokens. A chunk is the parallel form run
on [held tokens, chunk] (which starts at a block boundary) with the cache as the initial aggregate; a token at a
time is ``vq_attention_update``. Means are stored, not sums (the fold m ← (n·m + Σv) / n' keeps them O(|v|)).

Shapes: q: (B, H, L, dk), k_hat: (B, H, L, dk), v: (B, H, L, dv), z: (B, H, L) int64 codes, codebook: (H, S, dk),
valid: bool (B, L) or None, recent_bias: (2W,) or (H, 2W), local_bias: (4W-1,) or (H, 4W-1). ``scale`` multiplies
q·k (default dk^-1/2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.ops.masked_softmax import masked_softmax
from longseq.ops.pack import pack, unpack
from longseq.ops.precision import compute_dtype


class CodeAggregate(NamedTuple):
    """Keys and values grouped by code: counts (B, H, S), keys (B, H, S, dk) (value: the codebook rows),
    values (B, H, S, dv) (the mean value of each code's keys; 0 for an empty code)."""

    counts: Tensor
    keys: Tensor
    values: Tensor


class VQCacheState(NamedTuple):
    """The causal form's state: the aggregated cache (counts, keys, values as in ``CodeAggregate``), the recent
    tokens recent_k: (B, H, R, dk), recent_v: (B, H, R, dv), recent_z: (B, H, R) int64 (row b holds its first
    ``held(seen[b])`` slots, the rest are zero), and seen: (B,) int64, the valid tokens so far."""

    counts: Tensor
    keys: Tensor
    values: Tensor
    recent_k: Tensor
    recent_v: Tensor
    recent_z: Tensor
    seen: Tensor


def empty_vq_cache(batch_size: int, n_heads: int, n_codes: int, dk: int, dv: int, *,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> VQCacheState:
    """The state before any token: an empty cache and no recent token."""
    kw = dict(device=device, dtype=dtype)
    return VQCacheState(
        counts=torch.zeros(batch_size, n_heads, n_codes, **kw),
        keys=torch.zeros(batch_size, n_heads, n_codes, dk, **kw),
        values=torch.zeros(batch_size, n_heads, n_codes, dv, **kw),
        recent_k=torch.zeros(batch_size, n_heads, 0, dk, **kw),
        recent_v=torch.zeros(batch_size, n_heads, 0, dv, **kw),
        recent_z=torch.zeros(batch_size, n_heads, 0, dtype=torch.long, device=device),
        seen=torch.zeros(batch_size, dtype=torch.long, device=device),
    )


def recent_start(seen: Tensor, block_len: int) -> Tensor:
    """The rank of the oldest token in the recent set of the token of rank ``seen``: the start of the block before
    its own (0 in the first block)."""
    return (torch.div(seen, block_len, rounding_mode="floor") - 1).clamp(min=0) * block_len


def held(seen: Tensor, block_len: int) -> Tensor:
    """How many recent tokens a state after ``seen`` valid tokens holds (at most 2·block_len - 1)."""
    return seen - recent_start(seen, block_len)


# ----------------------------------------------------------------------------------------------------------
# Shared pieces


def _check(block_len: int | None, recent_bias: Tensor | None, fn: str) -> None:
    if block_len is not None and (not isinstance(block_len, int) or block_len < 1):
        raise ValueError(f"{fn}: block_len={block_len!r} must be a positive integer")
    if recent_bias is not None and (block_len is None or recent_bias.shape[-1] != 2 * block_len
                                    or recent_bias.dim() > 2):
        raise ValueError(f"{fn}: recent_bias must have shape (2·block_len,) or (H, 2·block_len) = "
                         f"(..., {None if block_len is None else 2 * block_len}), got {tuple(recent_bias.shape)}")


def _bias_at(recent_bias: Tensor, offsets: Tensor) -> Tensor:
    """recent_bias: (2W,) or (H, 2W); offsets: integer (...) -> (...) or (H, ...); out-of-range offsets (never
    visible) are clamped."""
    offsets = offsets.clamp(0, recent_bias.shape[-1] - 1)
    return recent_bias[..., offsets]


def _one_hot(z: Tensor, n_codes: int, keep: Tensor, dtype: torch.dtype) -> Tensor:
    """z: (..., L) codes, keep: bool broadcastable to (..., L) -> (..., L, S), rows of dropped positions zero."""
    return F.one_hot(z, n_codes).to(dtype) * keep[..., None].to(dtype)


def _sums(one_hot: Tensor, k_hat: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-code sums over dim -2: one_hot (..., L, S), k_hat (..., L, dk), v (..., L, dv) -> (counts (..., S),
    key offsets Σ(k̂ - sg k̂) (..., S, dk) — zero in value, they carry the straight-through gradient —,
    value sums (..., S, dv))."""
    delta = k_hat - k_hat.detach()
    return (one_hot.sum(dim=-2), torch.einsum("...ls,...ld->...sd", one_hot, delta),
            torch.einsum("...ls,...ld->...sd", one_hot, v))


def _means(counts: Tensor, key_sums: Tensor, value_sums: Tensor, codebook: Tensor) -> CodeAggregate:
    """Sums -> the aggregate. codebook broadcastable to key_sums. A count is an integer, so clamping it at 1 is
    exact where it is >= 1 and gives an empty code zero sums over 1 (no 0/0 in the forward or the backward)."""
    n = counts.clamp(min=1)[..., None]
    return CodeAggregate(counts, codebook + key_sums / n, value_sums / n)


def _attend(q: Tensor, k_r: Tensor, v_r: Tensor, visible_r: Tensor, bias_r: Tensor | None, agg: CodeAggregate,
            q_valid: Tensor | None, scale: float) -> Tensor:
    """One joint softmax over recent keys and aggregated codes.
    q: (..., Q, dk); k_r: (..., R, dk), v_r: (..., R, dv), visible_r / bias_r broadcastable to (..., Q, R);
    agg over (..., S); q_valid broadcastable to (..., Q) -> (..., Q, dv)."""
    recent = torch.einsum("...qd,...rd->...qr", q, k_r) * scale
    if bias_r is not None:
        recent = recent + bias_r
    cached = torch.einsum("...qd,...sd->...qs", q, agg.keys) * scale + agg.counts.clamp(min=1).log()[..., None, :]
    visible = torch.cat([visible_r.expand(recent.shape), (agg.counts > 0)[..., None, :].expand(cached.shape)], -1)
    if q_valid is not None:
        visible = visible & q_valid[..., None]
    probs = masked_softmax(torch.cat([recent, cached], dim=-1), visible)
    r = k_r.shape[-2]
    return probs[..., :r] @ v_r + probs[..., r:] @ agg.values


def _two_blocks_back(per_block: Tensor) -> Tensor:
    """per_block: (B, H, n, ...) sums of each block -> at block m, the sum over blocks 0..m-2 (what its cache
    holds beyond the initial one)."""
    n = per_block.shape[2]
    return F.pad(per_block.cumsum(dim=2), (0, 0) * (per_block.dim() - 3) + (2, 0))[:, :, :n]


def _blocks(x: Tensor, n: int, w: int) -> Tensor:
    """(B, H, Lc, ...) -> (B, H, n, W, ...), zero-padded at the end to n blocks of W."""
    return F.pad(x, [0, 0] * (x.dim() - 3) + [0, n * w - x.shape[2]]).unflatten(2, (n, w))


def _strips(x: Tensor, n: int, w: int, ahead: int) -> Tensor:
    """(B, H, Lc, e) -> (B, H, n, (2 + ahead)·W, e): at block m, blocks m-1 .. m+ahead (zeros beyond the ends)."""
    width = (2 + ahead) * w
    return F.pad(x, (0, 0, w, (n + ahead) * w - x.shape[2])).unfold(2, width, w).transpose(-1, -2)


def _state_to(state: VQCacheState, dtype: torch.dtype) -> VQCacheState:
    return state._replace(**{f: getattr(state, f).to(dtype) for f in ("counts", "keys", "values", "recent_k",
                                                                         "recent_v")})


def _combine(state: VQCacheState, valid: Tensor, block_len: int,
             pairs: list[tuple[Tensor, Tensor]]) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """The state's held tokens followed by a chunk's valid tokens, packed per row: [held, chunk] starts at rank
    recent_start(seen), a block boundary. pairs: (prefix (B, H, R, ...), chunk (B, H, T, ...)) -> (packed tensors
    (B, H, R + T, ...), valid-before-packing (B, R + T), count (B,) valid tokens packed, start (B,) the rank of
    packed position 0)."""
    r = state.recent_k.shape[2]
    start = recent_start(state.seen, block_len)
    slots = torch.arange(r, device=valid.device)[None, :] < (state.seen - start)[:, None]
    combined = torch.cat([slots, valid], dim=1)
    packed = [pack(torch.cat([prefix, chunk], dim=2), combined, dim=2) for prefix, chunk in pairs]
    return packed, combined, combined.sum(dim=1), start


def _fold(state: VQCacheState, k: Tensor, v: Tensor, z: Tensor, count: Tensor, start: Tensor, block_len: int,
          codebook: Tensor) -> VQCacheState:
    """The state after the packed [held, chunk] tokens k, v, z: (B, H, Lc, ...), ``count`` valid, of which the first
    start' - start move into the cache and the rest are the new recent tokens."""
    seen = start + count
    new_start = recent_start(seen, block_len)
    into_cache = new_start - start  # a multiple of block_len, <= count
    positions = torch.arange(k.shape[2], device=k.device)[None, :]
    one_hot = _one_hot(z, codebook.shape[-2], (positions < into_cache[:, None])[:, None], k.dtype)
    counts, key_sums, value_sums = _sums(one_hot, k, v)
    old = state.counts[..., None]
    agg = _means(state.counts + counts, old * (state.keys - codebook) + key_sums, old * state.values + value_sums,
                 codebook)
    keep = seen - new_start
    width = int(keep.max()) if keep.numel() else 0
    slot = torch.arange(width, device=k.device)[None, :]
    index = (into_cache[:, None] + slot).clamp(max=max(k.shape[2] - 1, 0))[:, None, :]  # (B, 1, R')
    filled = (slot < keep[:, None])[:, None, :]

    def take(t: Tensor) -> Tensor:
        if t.dim() == 3:
            return t.gather(2, index.expand(-1, t.shape[1], -1)).masked_fill(~filled, 0)
        got = t.gather(2, index[..., None].expand(-1, t.shape[1], -1, t.shape[3]))
        return got.masked_fill(~filled[..., None], 0.0)

    return VQCacheState(agg.counts, agg.keys, agg.values, take(k), take(v), take(z), seen)


# ----------------------------------------------------------------------------------------------------------
# The oracle


def vq_attention_ref(q: Tensor, k_hat: Tensor, v: Tensor, z: Tensor, codebook: Tensor, *, causal: bool = True,
                     q_valid: Tensor | None = None, k_valid: Tensor | None = None, block_len: int | None = None,
                     recent_bias: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Dense softmax attention over the quantised keys, an explicit (Lq x Lk) form. Causal (self: Lq = Lk, query i
    is key position i) needs ``block_len``: key j is in query i's recent set when the blocks of their valid-token
    ranks differ by at most 1, and gets ``recent_bias[rank_i - rank_j]``; every other visible key is aggregated.
    Non-causal (self or cross) aggregates every key (no block_len, no bias). A recent key's score is q·k̂_j; an
    aggregated key's is q·k̄ with k̄ = C[z_j] + the mean of (k̂ - sg k̂) over the keys of code z_j that query i
    aggregates (the fast forms' gradient, see the module docstring). -> (B, H, Lq, dv), 0 at invalid queries."""
    fn = "vq_attention_ref"
    if causal and block_len is None:
        raise ValueError(f"{fn}: the causal form needs block_len (it defines the recent set)")
    if not causal and (block_len is not None or recent_bias is not None):
        raise ValueError(f"{fn}: the non-causal form aggregates every key; block_len and recent_bias are causal only")
    _check(block_len, recent_bias, fn)
    b, _, lq, dk = q.shape
    lk = k_hat.shape[2]
    scale = dk ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k_hat, v)
    q, k_hat, v, codebook = q.to(dtype), k_hat.to(dtype), v.to(dtype), codebook.to(dtype)
    qv = torch.ones(b, lq, dtype=torch.bool, device=q.device) if q_valid is None else q_valid
    kv = torch.ones(b, lk, dtype=torch.bool, device=q.device) if k_valid is None else k_valid
    visible = qv[:, :, None] & kv[:, None, :]
    recent = torch.zeros_like(visible)
    offset = torch.zeros(b, lq, lk, dtype=torch.long, device=q.device)
    if causal:
        if lq != lk:
            raise ValueError(f"{fn}: causal attention is self attention (Lq = Lk), got {lq} and {lk}")
        i, j = torch.arange(lq, device=q.device)[:, None], torch.arange(lk, device=q.device)[None, :]
        visible = visible & (j <= i)
        rank = kv.long().cumsum(dim=1) - 1
        offset = rank[:, :, None] - rank[:, None, :]
        recent = visible & (rank[:, :, None] // block_len - rank[:, None, :] // block_len <= 1)
    bias = None if recent_bias is None else _bias_at(recent_bias.to(dtype), offset)
    return _dense(q, k_hat, v, z, codebook, visible, recent, bias, scale)


def _dense(q: Tensor, k_hat: Tensor, v: Tensor, z: Tensor, codebook: Tensor, visible: Tensor, individual: Tensor,
           bias: Tensor | None, scale: float) -> Tensor:
    """The oracles' explicit quadratic form (inputs already in the compute dtype). visible, individual: bool (B, Lq,
    Lk): the keys each query sees, and those of them it scores individually (q·k̂_j, plus ``bias``: (B, Lq, Lk) or
    (H, B, Lq, Lk), on those pairs only); every other visible key is aggregated, scored q·k̄ with k̄ = C[z_j] + the
    mean of (k̂ - sg k̂) over the keys of code z_j that query i aggregates. -> (B, H, Lq, dv)."""
    dtype = q.dtype
    cached = (visible & ~individual).to(dtype)  # (B, Lq, Lk)
    one_hot = F.one_hot(z, codebook.shape[1]).to(dtype)  # (B, H, Lk, S)
    counts = torch.einsum("bij,bhjs->bhis", cached, one_hot)
    key_sums = torch.einsum("bij,bhjs,bhjd->bhisd", cached, one_hot, k_hat - k_hat.detach())
    k_bar = codebook[None, :, None] + key_sums / counts.clamp(min=1)[..., None]  # (B, H, Lq, S, dk)
    k_cached = torch.einsum("bhjs,bhisd->bhijd", one_hot, k_bar)  # each aggregated key as query i sees it
    scores = torch.where(individual[:, None], q @ k_hat.transpose(-1, -2),
                         torch.einsum("bhid,bhijd->bhij", q, k_cached)) * scale
    if bias is not None:
        bias = bias[:, None] if bias.dim() == 3 else bias.transpose(0, 1)
        scores = scores + torch.where(individual[:, None], bias, 0.0)
    return masked_softmax(scores, visible[:, None]) @ v


# ----------------------------------------------------------------------------------------------------------
# Causal: blockwise (chunks, parallel) and one token


def vq_attention_chunked(q: Tensor, k_hat: Tensor, v: Tensor, z: Tensor, codebook: Tensor, *, block_len: int,
                         valid: Tensor | None = None, recent_bias: Tensor | None = None, scale: float | None = None,
                         initial_state: VQCacheState | None = None,
                         return_state: bool = True) -> tuple[Tensor, VQCacheState | None]:
    """Causal attention over the quantised keys of a chunk, after the tokens summarised in ``initial_state`` (None:
    from the start). -> (o: (B, H, T, dv), the state after the chunk, or None when not ``return_state``)."""
    _check(block_len, recent_bias, "vq_attention_chunked")
    b, h, t, dk = q.shape
    w, n_codes = block_len, codebook.shape[1]
    scale = dk ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k_hat, v)
    q, k_hat, v, codebook = q.to(dtype), k_hat.to(dtype), v.to(dtype), codebook.to(dtype)
    state = initial_state if initial_state is not None else empty_vq_cache(
        b, h, n_codes, dk, v.shape[-1], device=q.device, dtype=dtype)
    state = _state_to(state, dtype)
    valid = torch.ones(b, t, dtype=torch.bool, device=q.device) if valid is None else valid
    r = state.recent_k.shape[2]
    (qc, kc, vc, zc), combined, count, start = _combine(state, valid, w, [
        (q.new_zeros(b, h, r, dk), q), (state.recent_k, k_hat), (state.recent_v, v), (state.recent_z, z)])
    length = r + t
    n = max(1, -(-length // w))

    exists = torch.arange(n * w, device=q.device)[None, :] < count[:, None]  # (B, nW)
    key_ok = F.pad(exists, (w, 0)).unfold(1, 2 * w, w)  # (B, n, 2W)
    u, j = torch.arange(w, device=q.device)[:, None], torch.arange(2 * w, device=q.device)[None, :]
    visible_r = (j <= u + w) & key_ok[:, None, :, None, :]  # (B, 1, n, W, 2W)
    bias_r = None
    if recent_bias is not None:
        bias_r = _bias_at(recent_bias.to(dtype), u + w - j)  # (W, 2W) or (H, W, 2W)
        bias_r = bias_r if recent_bias.dim() == 1 else bias_r[:, None]

    # The cache of block m: the initial aggregate plus blocks 0..m-2, from prefix sums of per-block sums.
    keep = exists.unflatten(1, (n, w))[:, None]  # (B, 1, n, W)
    per_block = _sums(_one_hot(_blocks(zc, n, w), n_codes, keep, dtype), _blocks(kc, n, w), _blocks(vc, n, w))
    old = state.counts[:, :, None]
    initial = (old, old[..., None] * (state.keys - codebook)[:, :, None], old[..., None] * state.values[:, :, None])
    agg = _means(*(first + _two_blocks_back(s) for first, s in zip(initial, per_block, strict=True)),
                 codebook[None, :, None])

    o = _attend(_blocks(qc, n, w), _strips(kc, n, w, 0), _strips(vc, n, w, 0), visible_r, bias_r, agg, keep, scale)
    o = unpack(o.flatten(2, 3)[:, :, :length], combined, dim=2)[:, :, r:]
    final = _fold(state, kc, vc, zc, count, start, w, codebook[None, :]) if return_state else None
    return o, final


def vq_attention_update(q: Tensor, k_hat: Tensor, v: Tensor, z: Tensor, codebook: Tensor, state: VQCacheState, *,
                        block_len: int, valid: Tensor | None = None, recent_bias: Tensor | None = None,
                        scale: float | None = None) -> tuple[Tensor, VQCacheState]:
    """One token (decoding): q, k_hat: (B, H, dk), v: (B, H, dv), z: (B, H), valid: bool (B,) or None -> (o: (B, H,
    dv), state). The token attends its held recent tokens, itself and the cache: O((2W + S)·d) per head."""
    _check(block_len, recent_bias, "vq_attention_update")
    b, _, dk = q.shape
    scale = dk ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k_hat, v)
    q, k_hat, v, codebook = q.to(dtype), k_hat.to(dtype), v.to(dtype), codebook.to(dtype)
    state = _state_to(state, dtype)
    valid = torch.ones(b, dtype=torch.bool, device=q.device) if valid is None else valid
    r = state.recent_k.shape[2]
    own = state.seen - recent_start(state.seen, block_len)  # (B,) held tokens
    slot = torch.arange(r + 1, device=q.device)[None, :]
    visible_r = ((slot < own[:, None]) | (slot == r))[:, None, None, :]  # (B, 1, 1, R + 1)
    bias_r = None
    if recent_bias is not None:
        offsets = torch.where(slot == r, 0, own[:, None] - slot)  # (B, R + 1): the query's rank minus the key's
        bias_r = _bias_at(recent_bias.to(dtype), offsets)
        bias_r = bias_r[:, None, None] if recent_bias.dim() == 1 else bias_r.transpose(0, 1)[:, :, None]
    k_r = torch.cat([state.recent_k, k_hat[:, :, None]], dim=2)
    v_r = torch.cat([state.recent_v, v[:, :, None]], dim=2)
    agg = CodeAggregate(state.counts, state.keys, state.values)
    o = _attend(q[:, :, None], k_r, v_r, visible_r, bias_r, agg, valid[:, None, None], scale)[:, :, 0]
    (kc, vc, zc), _, count, start = _combine(state, valid[:, None], block_len, [
        (state.recent_k, k_hat[:, :, None]), (state.recent_v, v[:, :, None]), (state.recent_z, z[:, :, None])])
    return o, _fold(state, kc, vc, zc, count, start, block_len, codebook[None, :])


# ----------------------------------------------------------------------------------------------------------
# Non-causal with a local window (LongVQ)


def _check_local_bias(block_len: int, local_bias: Tensor | None, fn: str) -> None:
    if local_bias is not None and (local_bias.dim() > 2 or local_bias.shape[-1] != 4 * block_len - 1):
        raise ValueError(f"{fn}: local_bias must have shape (4·block_len - 1,) or (H, 4·block_len - 1) = "
                         f"(..., {4 * block_len - 1}), got {tuple(local_bias.shape)}")


def vq_attention_local_ref(q: Tensor, k_hat: Tensor, v: Tensor, z: Tensor, codebook: Tensor, *, block_len: int,
                           valid: Tensor | None = None, local_bias: Tensor | None = None,
                           scale: float | None = None) -> Tensor:
    """Oracle of ``vq_attention_local``: dense non-causal self attention over the quantised keys, an explicit (L x L)
    form. Key j is local to query i when the blocks of their valid-token ranks differ by at most 1 (either way): it is
    scored q·k̂_j + ``local_bias[rank_i - rank_j + 2W - 1]``; every other valid key is aggregated (k̄ as in
    ``vq_attention_ref``, no bias). -> (B, H, L, dv), 0 at invalid queries."""
    fn = "vq_attention_local_ref"
    _check(block_len, None, fn)
    _check_local_bias(block_len, local_bias, fn)
    b, _, length, dk = q.shape
    scale = dk ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k_hat, v)
    q, k_hat, v, codebook = q.to(dtype), k_hat.to(dtype), v.to(dtype), codebook.to(dtype)
    valid = torch.ones(b, length, dtype=torch.bool, device=q.device) if valid is None else valid
    visible = valid[:, :, None] & valid[:, None, :]
    rank = valid.long().cumsum(dim=1) - 1
    local = visible & ((rank[:, :, None] // block_len - rank[:, None, :] // block_len).abs() <= 1)
    offset = rank[:, :, None] - rank[:, None, :] + 2 * block_len - 1
    bias = None if local_bias is None else _bias_at(local_bias.to(dtype), offset)
    return _dense(q, k_hat, v, z, codebook, visible, local, bias, scale)


def vq_attention_local(q: Tensor, k_hat: Tensor, v: Tensor, z: Tensor, codebook: Tensor, *, block_len: int,
                       valid: Tensor | None = None, local_bias: Tensor | None = None,
                       scale: float | None = None) -> Tensor:
    """Non-causal self attention over the quantised keys with a two-sided local window (module docstring): q, k_hat:
    (B, H, L, dk), v: (B, H, L, dv), z: (B, H, L), codebook: (H, S, dk), valid: bool (B, L) or None, local_bias:
    (4W-1,) or (H, 4W-1) at i - j + 2W - 1 -> (B, H, L, dv), 0 at invalid queries. O(L·(3W + S)·d)."""
    fn = "vq_attention_local"
    _check(block_len, None, fn)
    _check_local_bias(block_len, local_bias, fn)
    b, _, length, dk = q.shape
    w, n_codes = block_len, codebook.shape[1]
    scale = dk ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k_hat, v)
    q, k_hat, v, codebook = q.to(dtype), k_hat.to(dtype), v.to(dtype), codebook.to(dtype)
    valid = torch.ones(b, length, dtype=torch.bool, device=q.device) if valid is None else valid
    qp, kp, vp, zp = (pack(t, valid, dim=2) for t in (q, k_hat, v, z))  # block m = valid tokens mW .. mW + W - 1
    n = max(1, -(-length // w))
    exists = torch.arange(n * w, device=q.device)[None, :] < valid.sum(dim=1)[:, None]  # (B, nW)
    visible_l = F.pad(exists, (w, w)).unfold(1, 3 * w, w)[:, None, :, None, :]  # (B, 1, n, 1, 3W)
    bias_l = None
    if local_bias is not None:  # query u of block m, key j of blocks m-1..m+1: i - j + 2W - 1 = u - j + 3W - 1
        u, j = torch.arange(w, device=q.device)[:, None], torch.arange(3 * w, device=q.device)[None, :]
        bias_l = _bias_at(local_bias.to(dtype), u - j + 3 * w - 1)  # (W, 3W) or (H, W, 3W)
        bias_l = bias_l if local_bias.dim() == 1 else bias_l[:, None]

    # The aggregate of block m: blocks 0..m-2 (a prefix sum) plus blocks m+2..n-1 (the same on the reversed blocks).
    keep = exists.unflatten(1, (n, w))[:, None]  # (B, 1, n, W)
    per_block = _sums(_one_hot(_blocks(zp, n, w), n_codes, keep, dtype), _blocks(kp, n, w), _blocks(vp, n, w))
    agg = _means(*(_two_blocks_back(s) + _two_blocks_back(s.flip(2)).flip(2) for s in per_block),
                 codebook[None, :, None])

    o = _attend(_blocks(qp, n, w), _strips(kp, n, w, 1), _strips(vp, n, w, 1), visible_l, bias_l, agg, keep, scale)
    return unpack(o.flatten(2, 3)[:, :, :length], valid, dim=2)


# ----------------------------------------------------------------------------------------------------------
# Aggregated: non-causal self, cross


def code_aggregate(k_hat: Tensor, v: Tensor, z: Tensor, codebook: Tensor, valid: Tensor | None = None) -> CodeAggregate:
    """Every valid key of a sequence grouped by code: k_hat: (B, H, L, dk), v: (B, H, L, dv), z: (B, H, L),
    codebook: (H, S, dk), valid: bool (B, L) or None -> the aggregate over (B, H, S)."""
    dtype = compute_dtype(k_hat, v)
    k_hat, v, codebook = k_hat.to(dtype), v.to(dtype), codebook.to(dtype)
    keep = torch.ones(z.shape[0], 1, z.shape[2], dtype=torch.bool, device=z.device) if valid is None \
        else valid[:, None]
    return _means(*_sums(_one_hot(z, codebook.shape[1], keep, dtype), k_hat, v), codebook[None])


def aggregate_attention(q: Tensor, aggregate: CodeAggregate, *, q_valid: Tensor | None = None,
                        scale: float | None = None) -> Tensor:
    """Every query attends every aggregated code: q: (B, H, Lq, dk) -> (B, H, Lq, dv); 0 at invalid queries and
    where the aggregate is empty."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, aggregate.values)
    agg = CodeAggregate(*(t.to(dtype) for t in aggregate))
    b, h = q.shape[:2]
    none = q.new_zeros(b, h, 0, q.shape[-1], dtype=dtype)
    return _attend(q.to(dtype), none, none.new_zeros(b, h, 0, agg.values.shape[-1]),
                   torch.ones(1, 1, 1, 0, dtype=torch.bool, device=q.device), None, agg,
                   None if q_valid is None else q_valid[:, None], scale)


def vq_attention(q: Tensor, k_hat: Tensor, v: Tensor, z: Tensor, codebook: Tensor, *, causal: bool = True,
                 block_len: int | None = None, valid: Tensor | None = None, recent_bias: Tensor | None = None,
                 scale: float | None = None) -> Tensor:
    """Self attention over the quantised keys of one sequence: causal = the blockwise form (needs block_len),
    non-causal = the aggregated form. -> (B, H, L, dv)."""
    if causal:
        if block_len is None:
            raise ValueError("vq_attention: the causal form needs block_len")
        return vq_attention_chunked(q, k_hat, v, z, codebook, block_len=block_len, valid=valid,
                                    recent_bias=recent_bias, scale=scale, return_state=False)[0]
    if block_len is not None or recent_bias is not None:
        raise ValueError("vq_attention: the non-causal form aggregates every key; block_len and recent_bias are "
                         "causal only")
    return aggregate_attention(q, code_aggregate(k_hat, v, z, codebook, valid), q_valid=valid, scale=scale)
