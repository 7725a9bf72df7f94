"""Linear randomized attention (LARA, Zheng et al. 2022): softmax attention estimated by self-normalised importance
sampling with C proposal distributions, combined by multiple-importance weights.

Per head, with s = d^-1/2, proposal means mu_c (C of them) and the sampled proposals w_c (= mu_c in eval, mu_c plus
standard gaussian noise in training — the caller's choice), the log positive random feature of a vector x is

    l_c(x) = s (w_c·x − |x|²/2)

and the output of query n is

    stats_c = sum_m softmax_m(l_c(k_m)) v_m                                      (C x dv, over valid keys m)
    pi_n = softmax_c( s mu_c·q_n + l_c(q_n) + logsumexp_m l_c(k_m) − l_c(mu_c) )  (the importance weights)
    out_n = sum_c pi_{n,c} stats_c

O(L C d) time. Everything is a softmax or a logsumexp, computed in log space (``ops/masked_softmax.py``): masked keys
are excluded from both the softmax over keys and the logsumexp, and invalid proposals (empty segments, see
``ops/landmarks.py``) from the softmax over proposals; a row with no valid proposal outputs 0.

Shapes: q, k: (B, ..., L, d), v: (B, ..., L, dv), mu, proposals: (B, ..., C, d), k_valid: bool (B, L),
c_valid: bool (B, C) -> (B, ..., L, dv) in v's dtype, computed in float32 at least.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longseq.ops.masked_softmax import masked_logsumexp, masked_softmax
from longseq.ops.precision import compute_dtype


def _check(fn: str, q: Tensor, k: Tensor, v: Tensor, mu: Tensor, proposals: Tensor) -> None:
    ok = (q.dim() == k.dim() == v.dim() == mu.dim() >= 3 and mu.shape == proposals.shape
          and k.shape[:-1] == v.shape[:-1] and q.shape[-1] == k.shape[-1] == mu.shape[-1])
    if not ok:
        raise ValueError(f"{fn}: expected q, k: (B, ..., L, d), v: (B, ..., L, dv), mu and proposals: (B, ..., C, d); "
                         f"got {[tuple(t.shape) for t in (q, k, v, mu, proposals)]}")


def _batch_mask(valid: Tensor | None, like: Tensor) -> Tensor | None:
    """(B, N) -> (B, 1, ..., 1, N) for a tensor ``like`` of rank r whose last dim is N."""
    return None if valid is None else valid.view(valid.shape[0], *[1] * (like.dim() - 2), valid.shape[-1])


def lara_attention(q: Tensor, k: Tensor, v: Tensor, mu: Tensor, proposals: Tensor, *,
                   k_valid: Tensor | None = None, c_valid: Tensor | None = None) -> Tensor:
    """The module docstring's formula, batched."""
    _check("lara_attention", q, k, v, mu, proposals)
    dtype = compute_dtype(q, k, v, mu, proposals)
    q, k, vc, mu, w = (t.to(dtype) for t in (q, k, v, mu, proposals))
    s = q.shape[-1] ** -0.5

    def log_feature(x: Tensor) -> Tensor:  # (..., N, d) -> (..., C, N): l_c(x_n)
        return s * (w @ x.transpose(-1, -2) - x.pow(2).sum(dim=-1)[..., None, :] / 2)

    log_k = log_feature(k)  # (..., C, L)
    keys = _batch_mask(k_valid, log_k)
    if k_valid is not None:  # a masked value gets weight 0; zeroing it keeps garbage out of 0 · x
        vc = vc.masked_fill(~k_valid.view(k_valid.shape[0], *[1] * (vc.dim() - 3), -1, 1), 0.0)
    stats = masked_softmax(log_k, keys, dim=-1) @ vc  # (..., C, dv)
    log_mu = s * ((w * mu).sum(dim=-1) - mu.pow(2).sum(dim=-1) / 2)  # (..., C): l_c(mu_c)
    logits = s * q @ mu.transpose(-1, -2) + log_feature(q).transpose(-1, -2)  # (..., L, C)
    logits = logits + (masked_logsumexp(log_k, keys, dim=-1) - log_mu)[..., None, :]
    return (masked_softmax(logits, _batch_mask(c_valid, logits), dim=-1) @ stats).to(v.dtype)


def lara_attention_ref(q: Tensor, k: Tensor, v: Tensor, mu: Tensor, proposals: Tensor, *,
                       k_valid: Tensor | None = None, c_valid: Tensor | None = None) -> Tensor:
    """The oracle: for each row and proposal, the explicit list of valid keys and hand-written softmaxes."""
    _check("lara_attention_ref", q, k, v, mu, proposals)
    b, d, n_prop = q.shape[0], q.shape[-1], mu.shape[-2]
    s = d ** -0.5
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=v.device)
    for row in range(b):
        keys = torch.arange(k.shape[-2]) if k_valid is None else k_valid[row].nonzero().flatten()
        props = [c for c in range(n_prop) if c_valid is None or c_valid[row, c]]
        if len(keys) == 0 or not props:
            continue
        log_ratio, stats = [], []
        for c in props:
            wc, mc = proposals[row, ..., c, :], mu[row, ..., c, :]  # (..., d)
            lk = s * ((k[row][..., keys, :] * wc[..., None, :]).sum(-1) - k[row][..., keys, :].pow(2).sum(-1) / 2)
            p = torch.exp(lk - lk.amax(dim=-1, keepdim=True))
            stats.append(((p / p.sum(-1, keepdim=True))[..., None] * v[row][..., keys, :]).sum(dim=-2))
            lq = s * ((q[row] * wc[..., None, :]).sum(-1) - q[row].pow(2).sum(-1) / 2)  # (..., L)
            lse = torch.log(torch.exp(lk - lk.amax(-1, keepdim=True)).sum(-1)) + lk.amax(-1)
            l_mu = s * ((wc * mc).sum(-1) - mc.pow(2).sum(-1) / 2)
            log_ratio.append(s * (q[row] * mc[..., None, :]).sum(-1) + lq + (lse - l_mu)[..., None])
        r = torch.stack(log_ratio, dim=-1)  # (..., L, C')
        pi = torch.exp(r - r.amax(dim=-1, keepdim=True))
        pi = pi / pi.sum(dim=-1, keepdim=True)
        out[row] = (pi[..., None] * torch.stack(stats, dim=-2)[..., None, :, :]).sum(dim=-2)
    return out
