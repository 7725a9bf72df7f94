"""Transformer-LS (Long-Short Transformer, Zhu et al. 2021): its attention over a local window and compressed keys.

One softmax per query over the concatenation of two sets of logits: a *short-term* window of keys around (non-causal)
or before (causal) the query, and *long-range* compressed keys — weighted sums of keys made by a softmax over
positions (``chunk_compress``). Shapes: q: (B, H, T, d), k: (B, H, S, d), v: (B, H, S, dv), compressed keys
k_bar: (B, H, G, d), v_bar: (B, H, G, dv). Masks are bool, True = valid; a key that is invalid gets no weight and a
query that sees no key at all outputs exactly 0.

- ``long_short_attention`` (non-causal, self: T = S): the sequence is cut into segments of ``window`` tokens; a
  query sees every key of its segment and ``window // 2`` keys on each side of it (the paper's segment-wise sliding
  window: 2·window keys), and every compressed key.
- ``causal_long_short_attention``: bottom-right aligned like ``ops/attention.py`` (query i sits at key position
  i + S - T, so a chunk of queries attends to a cache holding the keys before it): a query sees the last ``window``
  key positions up to its own, and the first ``n_bar_visible[b, i]`` compressed keys (the compressed chunks that
  ended before it).

The fast forms cut the queries into blocks and give each block the span of keys it can see (O(T·window·d) instead
of O(T·S·d)); the ``*_ref`` oracles list each query's visible keys one query at a time. Softmaxes run in float32 at
least (half-precision inputs are promoted); the outputs are in v's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.ops.masked_softmax import masked_softmax
from longseq.ops.precision import compute_dtype


def gather_span(x: Tensor, start: Tensor, width: int) -> Tensor:
    """x: (B, S, C), start: (B,) int -> (B, width, C): row b's entries start[b] .. start[b] + width - 1, zeros where
    that index falls outside [0, S). A new tensor (it aliases nothing)."""
    index = start[:, None] + torch.arange(width, device=x.device)
    inside = (index >= 0) & (index < x.shape[1])
    picked = x.gather(1, index.clamp(0, max(x.shape[1] - 1, 0))[..., None].expand(-1, -1, x.shape[2]))
    return picked.masked_fill(~inside[..., None], 0.0)


# -- compression by a softmax over positions ------------------------------------------------------------------------


def _check_compress(fn: str, logits: Tensor, x: Tensor, chunk_size: int) -> None:
    if logits.dim() != 4 or x.dim() != 4 or logits.shape[:3] != x.shape[:3]:
        raise ValueError(f"{fn}: logits must be (B, H, S, r) and x (B, H, S, d) with the same B, H, S, got "
                         f"{tuple(logits.shape)} and {tuple(x.shape)}")
    if chunk_size <= 0:
        raise ValueError(f"{fn}: chunk_size={chunk_size} must be positive")


def chunk_compress(logits: Tensor, x: Tensor, valid: Tensor | None, chunk_size: int) -> Tensor:
    """The dynamic projection: logits: (B, H, S, r), x: (B, H, S, d), valid: (B, S) -> (B, H, N, r, d) with
    N = ceil(S / chunk_size). Chunk n's vector j is sum_t p[t] x[t] over the valid t of the chunk, with
    p = softmax_t(logits[..., t, j]) within the chunk; a chunk with no valid token gives 0. chunk_size >= S is the
    non-causal projection over the whole sequence (N = 1)."""
    _check_compress("chunk_compress", logits, x, chunk_size)
    b, h, s, r = logits.shape
    out_dtype = x.dtype
    chunk_size = min(chunk_size, max(s, 1))
    n = -(-s // chunk_size)
    pad = n * chunk_size - s
    dtype = compute_dtype(logits, x)
    valid = torch.ones(b, s, dtype=torch.bool, device=x.device) if valid is None else valid
    allow = F.pad(valid, (0, pad), value=False).view(b, 1, n, chunk_size, 1)
    logits = F.pad(logits.to(dtype), (0, 0, 0, pad)).view(b, h, n, chunk_size, r)
    p = masked_softmax(logits, allow, dim=3)
    x = F.pad(x.to(dtype), (0, 0, 0, pad)).view(b, h, n, chunk_size, -1)
    return torch.einsum("bhncr,bhncd->bhnrd", p, x).to(out_dtype)


def chunk_compress_ref(logits: Tensor, x: Tensor, valid: Tensor | None, chunk_size: int) -> Tensor:
    """Oracle of ``chunk_compress``: chunk by chunk, row by row, a hand-written softmax over the chunk's valid
    positions."""
    _check_compress("chunk_compress_ref", logits, x, chunk_size)
    b, h, s, r = logits.shape
    n = -(-s // chunk_size)
    out = x.new_zeros(b, h, n, r, x.shape[-1])
    for bi in range(b):
        for c in range(n):
            ts = [t for t in range(c * chunk_size, min(s, (c + 1) * chunk_size)) if valid is None or valid[bi, t]]
            if not ts:
                continue
            lg = logits[bi][:, ts]  # (H, n_t, r)
            p = torch.exp(lg - lg.max(dim=1, keepdim=True).values)
            p = p / p.sum(dim=1, keepdim=True)
            out[bi, :, c] = torch.einsum("htr,htd->hrd", p, x[bi][:, ts])
    return out


# -- the joint softmax over a window of keys and compressed keys ---------------------------------------------------


def _check_attention(fn: str, q: Tensor, k: Tensor, v: Tensor, k_bar: Tensor, v_bar: Tensor, window: int) -> None:
    if q.dim() != 4 or k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{fn}: q (B, H, T, d), k (B, H, S, d) and v (B, H, S, dv) disagree: {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k_bar.shape[:2] != q.shape[:2] or k_bar.shape[-1] != q.shape[-1] or v_bar.shape[:3] != k_bar.shape[:3]:
        raise ValueError(f"{fn}: k_bar (B, H, G, d) and v_bar (B, H, G, dv) disagree with q: {tuple(k_bar.shape)}, "
                         f"{tuple(v_bar.shape)}, q {tuple(q.shape)}")
    if window <= 0:
        raise ValueError(f"{fn}: window={window} must be positive")


def _bar_allow(n_bar_visible: Tensor | None, b: int, t: int, g: int, device: torch.device) -> Tensor:
    """(B, T, G) bool: query i sees the compressed keys [0, n_bar_visible[b, i])."""
    if n_bar_visible is None:
        return torch.ones(b, t, g, dtype=torch.bool, device=device)
    return torch.arange(g, device=device) < n_bar_visible[..., None]


def _blocked_joint_attention(q: Tensor, q_bar: Tensor, k: Tensor, v: Tensor, k_valid: Tensor | None, k_bar: Tensor,
                             v_bar: Tensor, bar_allow: Tensor, *, block: int, span: int, first: int,
                             band: Tensor | None, scale: float) -> Tensor:
    """The engine of both fast forms. Queries in blocks of ``block``: block s sees the ``span`` key indices from
    first + s·block on (indices outside [0, S) are absent), restricted to ``band``: bool (block, span) (query a of a
    block sees its key t where band[a, t]; None: all) and to the valid keys; every query also sees the compressed
    keys where ``bar_allow``: (B, T, G). One softmax over both."""
    b, h, t, _ = q.shape
    s = k.shape[2]
    dtype = compute_dtype(q, k, v, k_bar, v_bar)
    nb = -(-t // block)
    left, right = max(0, -first), max(0, first + (nb - 1) * block + span - s)
    start = first + left
    valid = torch.ones(b, s, dtype=torch.bool, device=q.device) if k_valid is None else k_valid

    def key_tiles(x: Tensor) -> Tensor:  # (B, H, S, e) -> (B, H, nb, span, e)
        x = F.pad(x.to(dtype), (0, 0, left, right))[:, :, start: start + (nb - 1) * block + span]
        return x.unfold(2, span, block).transpose(-1, -2)

    def query_blocks(x: Tensor) -> Tensor:  # (B, H, T, e) -> (B, H, nb, block, e)
        return F.pad(x.to(dtype), (0, 0, 0, nb * block - t)).view(b, h, nb, block, -1)

    valid_tiles = F.pad(valid, (left, right), value=False)[:, start: start + (nb - 1) * block + span]
    allow_win = valid_tiles.unfold(1, span, block)[:, None, :, None, :]  # (B, 1, nb, 1, span)
    if band is not None:
        allow_win = allow_win & band
    allow_bar = F.pad(bar_allow, (0, 0, 0, nb * block - t), value=False).view(b, 1, nb, block, -1)
    qb = query_blocks(q) * scale
    logits_win = torch.einsum("bhnqd,bhnkd->bhnqk", qb, key_tiles(k))
    logits_bar = torch.einsum("bhnqd,bhgd->bhnqg", query_blocks(q_bar) * scale, k_bar.to(dtype))
    g = k_bar.shape[2]
    allow = torch.cat((allow_bar.expand(-1, -1, -1, block, -1), allow_win.expand(-1, -1, -1, block, -1)), dim=-1)
    p = masked_softmax(torch.cat((logits_bar, logits_win), dim=-1), allow)
    out = (torch.einsum("bhnqg,bhgd->bhnqd", p[..., :g], v_bar.to(dtype))
           + torch.einsum("bhnqk,bhnkd->bhnqd", p[..., g:], key_tiles(v)))
    return out.reshape(b, h, nb * block, -1)[:, :, :t].to(v.dtype)


def long_short_attention(q: Tensor, k: Tensor, v: Tensor, k_bar: Tensor, v_bar: Tensor, *, window: int,
                         k_valid: Tensor | None = None, q_bar: Tensor | None = None,
                         scale: float | None = None) -> Tensor:
    """Non-causal self: q, k: (B, H, L, d), v: (B, H, L, dv), k_bar: (B, H, G, d), v_bar: (B, H, G, dv),
    k_valid: (B, L) -> (B, H, L, dv). Query i of segment s = i // window sees keys
    [s·window - window//2, (s+1)·window + window//2) that are valid, and every compressed key; ``q_bar`` (default q)
    are the queries that meet the compressed keys (a mixer that rotates q and k for the window passes the unrotated
    queries here)."""
    _check_attention("long_short_attention", q, k, v, k_bar, v_bar, window)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"long_short_attention: self attention needs as many queries as keys, got {q.shape[2]} and "
                         f"{k.shape[2]}")
    b, _, t, d = q.shape
    ext = window // 2
    return _blocked_joint_attention(
        q, q if q_bar is None else q_bar, k, v, k_valid, k_bar, v_bar, _bar_allow(None, b, t, k_bar.shape[2], q.device),
        block=window, span=window + 2 * ext, first=-ext, band=None, scale=d ** -0.5 if scale is None else scale)


def causal_long_short_attention(q: Tensor, k: Tensor, v: Tensor, k_bar: Tensor, v_bar: Tensor, *, window: int,
                                k_valid: Tensor | None = None, n_bar_visible: Tensor | None = None,
                                q_bar: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Causal: q: (B, H, T, d) at key positions S-T .. S-1, k: (B, H, S, d), v: (B, H, S, dv), k_bar: (B, H, G, d),
    v_bar: (B, H, G, dv), k_valid: (B, S), n_bar_visible: (B, T) int (None: all G) -> (B, H, T, dv). Query i sees
    the valid keys among the ``window`` positions ending at its own, and the compressed keys [0, n_bar_visible)."""
    _check_attention("causal_long_short_attention", q, k, v, k_bar, v_bar, window)
    b, _, t, d = q.shape
    s = k.shape[2]
    if t > s:
        raise ValueError(f"causal_long_short_attention: {t} queries need at least as many keys, got {s}")
    block = max(1, min(window, t))
    span = window + block - 1
    # Query a of a block sits at tile column a + window - 1 and sees the window columns ending there.
    cols = torch.arange(span, device=q.device)
    rows = torch.arange(block, device=q.device)[:, None]
    band = (cols >= rows) & (cols <= rows + window - 1)
    return _blocked_joint_attention(
        q, q if q_bar is None else q_bar, k, v, k_valid, k_bar, v_bar,
        _bar_allow(n_bar_visible, b, t, k_bar.shape[2], q.device),
        block=block, span=span, first=s - t - (window - 1), band=band, scale=d ** -0.5 if scale is None else scale)


def _joint_ref(q: Tensor, q_bar: Tensor, k: Tensor, v: Tensor, k_bar: Tensor, v_bar: Tensor, keys: list[int],
               n_bar: int, scale: float) -> Tensor:
    """One query (q: (H, d)) over the listed keys (k: (H, S, d)) and the first n_bar compressed keys: (H, dv)."""
    logits = torch.cat(((k_bar[:, :n_bar] @ q_bar[:, :, None])[..., 0], (k[:, keys] @ q[:, :, None])[..., 0]), dim=1)
    if logits.shape[1] == 0:
        return q.new_zeros(q.shape[0], v.shape[-1])
    p = torch.exp(logits * scale - (logits * scale).max(dim=1, keepdim=True).values)
    p = p / p.sum(dim=1, keepdim=True)
    return (p[..., None] * torch.cat((v_bar[:, :n_bar], v[:, keys]), dim=1)).sum(dim=1)


def long_short_attention_ref(q: Tensor, k: Tensor, v: Tensor, k_bar: Tensor, v_bar: Tensor, *, window: int,
                             k_valid: Tensor | None = None, q_bar: Tensor | None = None,
                             scale: float | None = None) -> Tensor:
    """Oracle of ``long_short_attention``: one query at a time, its keys listed from the segment rule."""
    b, h, length, d = q.shape
    q_bar = q if q_bar is None else q_bar
    scale = d ** -0.5 if scale is None else scale
    out = q.new_zeros(b, h, length, v.shape[-1])
    for bi in range(b):
        for i in range(length):
            seg = i // window
            lo, hi = seg * window - window // 2, (seg + 1) * window + window // 2
            keys = [j for j in range(max(0, lo), min(length, hi)) if k_valid is None or k_valid[bi, j]]
            out[bi, :, i] = _joint_ref(q[bi, :, i], q_bar[bi, :, i], k[bi], v[bi], k_bar[bi], v_bar[bi], keys,
                                       k_bar.shape[2], scale)
    return out


def causal_long_short_attention_ref(q: Tensor, k: Tensor, v: Tensor, k_bar: Tensor, v_bar: Tensor, *, window: int,
                                    k_valid: Tensor | None = None, n_bar_visible: Tensor | None = None,
                                    q_bar: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Oracle of ``causal_long_short_attention``: one query at a time, its keys listed from the window rule."""
    b, h, t, d = q.shape
    s = k.shape[2]
    q_bar = q if q_bar is None else q_bar
    scale = d ** -0.5 if scale is None else scale
    out = q.new_zeros(b, h, t, v.shape[-1])
    for bi in range(b):
        for i in range(t):
            pos = i + s - t
            keys = [j for j in range(max(0, pos - window + 1), pos + 1) if k_valid is None or k_valid[bi, j]]
            n_bar = k_bar.shape[2] if n_bar_visible is None else int(n_bar_visible[bi, i])
            out[bi, :, i] = _joint_ref(q[bi, :, i], q_bar[bi, :, i], k[bi], v[bi], k_bar[bi], v_bar[bi], keys,
                                       n_bar, scale)
    return out
