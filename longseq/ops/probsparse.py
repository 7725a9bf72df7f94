"""ProbSparse self-attention (Informer, Zhou et al. 2021): exact attention for the few "active" queries, the mean of
the values for the rest.

Shapes: q, k: (B, H, L, d), v: (B, H, L, dv); masks bool, True = valid. For a sequence of n valid tokens:

- each query draws U = factor·ceil(ln n) keys uniformly among the valid ones (with replacement, as Informer does);
- its sparsity score is M(q) = max_j s_j - mean_j s_j over its sampled keys, s_j = q·k_j / sqrt(d): a query whose
  attention is far from uniform scores high;
- the u = factor·ceil(ln n) queries of highest M get exact softmax attention over all valid keys; the others
  ("lazy") output mean(v) over the valid keys — what a uniform attention would give.

u and U are at least 1 and at most n (Informer's caps; n = 1 would give ceil(ln 1) = 0). The selection has no
gradient (it is a top-k); the outputs are differentiable in q, k and v through the active attentions and the mean.
``sample_keys`` draws the samples so that a row's draws depend only on its valid count and the seed — not on its
batch position or its padding — so a padded row computes what its valid tokens give alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longseq.ops.attention import softmax_attention
from longseq.ops.precision import compute_dtype

_SAMPLED_BLOCK = 1 << 22  # sampled key entries gathered at once by sparsity_scores


def n_top(length: int, factor: int) -> int:
    """Informer's u (active queries) = U (sampled keys per query) for ``length`` valid tokens:
    factor·ceil(ln length), at least 1 and at most length (0 for an empty sequence)."""
    if length <= 0:
        return 0
    return min(length, max(1, factor * math.ceil(math.log(length))))


def sample_keys(n_valid: Tensor, length: int, factor: int, seed: int) -> tuple[Tensor, Tensor]:
    """n_valid: (B,) valid tokens per row (packed first) -> sample: (B, length, U) int64 key indices and
    sample_valid: (B, length, U) bool, U = the largest n_top over the rows (at least 1). Query i < n of a row with n
    valid tokens draws n_top(n) indices uniformly from [0, n); every other slot is invalid. The draws come from a CPU
    generator seeded with ``seed`` for each distinct n, so rows with equal n draw the same, whatever their batch."""
    counts = n_valid.tolist()
    width = max([1, *(n_top(n, factor) for n in counts)])  # one invalid slot at least: reductions stay defined
    sample = torch.zeros(len(counts), length, width, dtype=torch.long)
    sample_valid = torch.zeros(len(counts), length, width, dtype=torch.bool)
    draws: dict[int, Tensor] = {}
    for b, n in enumerate(counts):
        if n == 0:
            continue
        if n not in draws:
            draws[n] = torch.randint(n, (n, n_top(n, factor)), generator=torch.Generator().manual_seed(seed))
        sample[b, :n, : draws[n].shape[1]] = draws[n]
        sample_valid[b, :n, : draws[n].shape[1]] = True
    return sample.to(n_valid.device), sample_valid.to(n_valid.device)


def _check(fn: str, q: Tensor, k: Tensor, v: Tensor, sample: Tensor, sample_valid: Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"{fn}: q, k (B, H, L, d) and v (B, H, L, dv) disagree: {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if sample.shape[:2] != (q.shape[0], q.shape[2]) or sample_valid.shape != sample.shape:
        raise ValueError(f"{fn}: sample and sample_valid must be (B, L, U) with B, L = {q.shape[0]}, {q.shape[2]}, "
                         f"got {tuple(sample.shape)} and {tuple(sample_valid.shape)}")


def sparsity_scores(q: Tensor, k: Tensor, sample: Tensor, sample_valid: Tensor, scale: float) -> Tensor:
    """M = max - mean of each query's logits against its sampled keys: (B, H, L) in float32 at least; -inf for a
    query without samples (a padded one). No gradient: it only ranks the queries."""
    with torch.no_grad():
        dtype = compute_dtype(q, k)
        b, h, length, d = q.shape
        u = sample.shape[-1]
        # Token-major rows, so a sampled key is one contiguous (H, d) read; queries in blocks, so the sampled keys
        # held at once stay near _SAMPLED_BLOCK numbers instead of L·U·H·d.
        q_rows, k_rows = (t.to(dtype).transpose(1, 2).contiguous() for t in (q, k))  # (B, L, H, d)
        rows = torch.arange(b, device=q.device)[:, None, None]
        block = max(1, _SAMPLED_BLOCK // max(1, u * h * d))
        logits = torch.cat([(k_rows[rows, sample[:, s: s + block]] * q_rows[:, s: s + block, None]).sum(dim=-1)
                            for s in range(0, length, block)], dim=1).permute(0, 3, 1, 2) * scale  # (B, H, L, U)
        allow = sample_valid[:, None]
        count = allow.sum(dim=-1)
        top = logits.masked_fill(~allow, -math.inf).amax(dim=-1)
        mean = logits.masked_fill(~allow, 0.0).sum(dim=-1) / count.clamp(min=1)
        return torch.where(count > 0, top - mean, -math.inf)


def probsparse_attention(q: Tensor, k: Tensor, v: Tensor, sample: Tensor, sample_valid: Tensor, n_active: Tensor, *,
                         valid: Tensor | None = None, scale: float | None = None) -> Tensor:
    """q, k: (B, H, L, d), v: (B, H, L, dv), sample / sample_valid: (B, L, U) each query's sampled key indices,
    n_active: (B,) int queries to attend exactly, valid: (B, L) -> (B, H, L, dv); 0 at invalid queries."""
    _check("probsparse_attention", q, k, v, sample, sample_valid)
    b, h, length, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    valid = torch.ones(b, length, dtype=torch.bool, device=q.device) if valid is None else valid
    scores = sparsity_scores(q, k, sample, sample_valid, scale).masked_fill(~valid[:, None], -math.inf)
    weights = valid[:, None, :, None].to(v.dtype)
    lazy = (v * weights).sum(dim=2, keepdim=True) / weights.sum(dim=2, keepdim=True).clamp(min=1)
    u = min(length, int(n_active.max())) if b else 0
    if u == 0:  # no valid token anywhere in the batch
        return lazy.expand_as(v).masked_fill(~valid[:, None, :, None], 0.0)
    top = scores.topk(u, dim=-1).indices  # (B, H, u)
    top_ok = torch.arange(u, device=q.device) < n_active[:, None]  # (B, u): the row's first n_active picks
    o_top = softmax_attention(q.gather(2, top[..., None].expand(-1, -1, -1, d)), k, v, k_valid=valid, q_valid=top_ok,
                              scale=scale)
    # Picks beyond a row's n_active are lazy queries: they are written into `exact` but not marked active.
    active = torch.zeros_like(scores, dtype=torch.bool).scatter(2, top, top_ok[:, None].expand(-1, h, -1))
    exact = torch.zeros_like(v).scatter(2, top[..., None].expand(-1, -1, -1, v.shape[-1]), o_top)
    return torch.where(active[..., None], exact, lazy).masked_fill(~valid[:, None, :, None], 0.0)


def probsparse_attention_ref(q: Tensor, k: Tensor, v: Tensor, sample: Tensor, sample_valid: Tensor,
                             n_active: Tensor, *, valid: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Oracle of ``probsparse_attention``: per row and head, each query's score from its listed samples, the queries
    sorted by score, then one query at a time: a hand-written softmax over the valid keys, or the mean value."""
    _check("probsparse_attention_ref", q, k, v, sample, sample_valid)
    b, h, length, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    out = q.new_zeros(b, h, length, v.shape[-1])
    for bi in range(b):
        keys = [j for j in range(length) if valid is None or valid[bi, j]]
        queries = keys  # self attention: the valid tokens are both
        for hi in range(h):
            score = {}
            for i in queries:
                picked = [int(sample[bi, i, j]) for j in range(sample.shape[-1]) if sample_valid[bi, i, j]]
                s = [float(q[bi, hi, i] @ k[bi, hi, j]) * scale for j in picked]
                score[i] = max(s) - sum(s) / len(s)
            active = set(sorted(queries, key=lambda i: -score[i])[: int(n_active[bi])])
            for i in queries:
                if i in active:
                    logits = torch.stack([q[bi, hi, i] @ k[bi, hi, j] for j in keys]) * scale
                    p = torch.exp(logits - logits.max())
                    p = p / p.sum()
                    out[bi, hi, i] = (p[:, None] * v[bi, hi, keys]).sum(dim=0)
                else:
                    out[bi, hi, i] = v[bi, hi, keys].mean(dim=0)
    return out
