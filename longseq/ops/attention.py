"""Softmax attention: the explicit oracle and the fast forms (PyTorch SDPA, or the materialized score matrix).

Shapes: q: (B, H, Lq, d), k: (B, H, Lk, d), v: (B, H, Lk, dv) -> (B, H, Lq, dv).
Causality is bottom-right aligned: query i sits at key position i + (Lk - Lq), so the same call serves a full
sequence (Lq = Lk) and a chunk of queries against a cache that already holds the earlier keys.
Masks are bool, True = valid. A query that is invalid, or that sees no valid key, outputs exactly 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionImpl = Literal["sdpa", "math"]


def softmax_attention_ref(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, q_valid: Tensor | None = None,
                  k_valid: Tensor | None = None, scale: float | None = None) -> Tensor:
    """The oracle: one query at a time, an explicit list of visible keys, a hand-written softmax."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = q.new_zeros(b, h, lq, v.shape[-1])
    for bi in range(b):
        for i in range(lq):
            if q_valid is not None and not q_valid[bi, i]:
                continue
            last = i + (lk - lq) if causal else lk - 1
            keys = [j for j in range(lk) if j <= last and (k_valid is None or k_valid[bi, j])]
            if not keys:
                continue
            s = (k[bi][:, keys] @ q[bi, :, i, :, None]).squeeze(-1) * scale  # (H, n)
            p = torch.exp(s - s.max(dim=-1, keepdim=True).values)
            p = p / p.sum(dim=-1, keepdim=True)
            out[bi, :, i] = (p[..., None] * v[bi][:, keys]).sum(dim=1)
    return out


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
