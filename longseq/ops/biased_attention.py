"""Attention with an additive bias and MEGA's kernels: softmax, laplace and relu² (Ma et al., ICLR 2023).

Shapes: q: (..., Lq, d), k: (..., Lk, d), v: (..., Lk, dv); ``visible``: bool broadcastable to (..., Lq, Lk), True =
query i may attend key j; ``bias``: float broadcastable to (..., Lq, Lk) (a relative position bias) or None.

- ``softmax``: softmax over the visible keys of scale·q·k + bias (scale default d^-1/2).
- ``laplace`` / ``relu2`` (MEGA's element-wise attention): f(scale·q·k / n + bias) on the visible keys and 0
  elsewhere, n = the query's number of visible keys (MEGA's length normaliser: with a causal mask, the keys the
  query sees), scale default 1 (the 1/n replaces it, as in MEGA). f is relu(x)² or MEGA's laplace function, the
  Gaussian CDF Φ((x - μ)/σ) with μ = sqrt(1/2), σ = sqrt(1/(4π)), a bounded stand-in for relu² (the constants match
  the two at x = sqrt(2)). The weights are not normalised: their sum is not 1.

A query with no visible key outputs exactly 0 with finite gradients (masked weights are zeroed by ``masked_fill``,
whose backward gives them no gradient). Scores are formed in float32 at least; outputs have v's dtype.

``block_biased_attention`` is the chunked (MEGA-chunk) form over (B, H, L, d): chunks of ``chunk`` *valid* tokens
as ``ops.attention.block_local_attention`` counts them (each row packed, its valid tokens first), one
(c x c) attention per chunk with a bias between in-chunk positions; O(L·c·d), never an L x L matrix.
The ``*_ref`` forms are the oracles: a loop over queries with the explicit list of the keys each sees.
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.ops.attention import chunked_attention
from longseq.ops.masked_softmax import masked_softmax

Kernel = Literal["softmax", "laplace", "relu2"]
KERNELS: tuple[str, ...] = typing.get_args(Kernel)

# MEGA's laplace attention function: the CDF of N(μ, σ²).
LAPLACE_MU = math.sqrt(0.5)
LAPLACE_SIGMA = math.sqrt(0.25 / math.pi)


def laplace(x: Tensor) -> Tensor:
    """MEGA's laplace function 0.5·(1 + erf((x - μ) / (σ·sqrt 2))), μ = sqrt(1/2), σ = sqrt(1/(4π))."""
    return 0.5 * (1.0 + torch.erf((x - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0))))


def relu2(x: Tensor) -> Tensor:
    """relu(x)²."""
    return F.relu(x).square()


_FUNCTIONS = {"laplace": laplace, "relu2": relu2}


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"biased_attention: kernel={kernel!r} is not allowed; allowed: {', '.join(KERNELS)}")


def default_scale(kernel: str, d: int, scale: float | None) -> float:
    """``scale`` if given, else d^-1/2 for softmax and 1 for laplace / relu2 (their 1/n normaliser replaces it)."""
    if scale is not None:
        return scale
    return d**-0.5 if kernel == "softmax" else 1.0


def biased_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, *, bias: Tensor | None = None,
                     kernel: Kernel = "softmax", scale: float | None = None) -> Tensor:
    """q: (..., Lq, d), k: (..., Lk, d), v: (..., Lk, dv), visible: bool broadcastable to (..., Lq, Lk), bias:
    float broadcastable to (..., Lq, Lk) or None -> (..., Lq, dv). See the module docstring for the kernels."""
    _check_kernel(kernel)
    scale = default_scale(kernel, q.shape[-1], scale)
    logits = ((q * scale) @ k.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32))
    if kernel == "softmax":
        weights = masked_softmax(logits if bias is None else logits + bias, visible)
    else:
        n = visible.expand(*visible.shape[:-1], k.shape[-2]).sum(dim=-1, keepdim=True).clamp(min=1)
        x = logits / n if bias is None else logits / n + bias
        weights = _FUNCTIONS[kernel](x).masked_fill(~visible, 0.0)
    return weights.to(v.dtype) @ v


def biased_attention_ref(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, *, bias: Tensor | None = None,
                         kernel: Kernel = "softmax", scale: float | None = None) -> Tensor:
    """Oracle of ``biased_attention``: one query at a time, the explicit list of the keys it sees, a hand-written
    softmax (laplace as the Gaussian CDF ``torch.special.ndtr``, relu² as a clamp)."""
    _check_kernel(kernel)
    scale = default_scale(kernel, q.shape[-1], scale)
    lq, lk = q.shape[-2], k.shape[-2]
    shapes = [q.shape[:-2], k.shape[:-2], v.shape[:-2], visible.shape[:-2]]
    lead = torch.broadcast_shapes(*shapes, *([] if bias is None else [bias.shape[:-2]]))
    q, k, v = (t.expand(*lead, *t.shape[-2:]).reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    visible = visible.expand(*lead, lq, lk).reshape(-1, lq, lk)
    bias = q.new_zeros(()).expand(*lead, lq, lk) if bias is None else bias.expand(*lead, lq, lk)
    bias = bias.reshape(-1, lq, lk)
    out = q.new_zeros(q.shape[0], lq, v.shape[-1])
    for b in range(q.shape[0]):
        for i in range(lq):
            keys = visible[b, i].nonzero().flatten()
            if len(keys) == 0:
                continue
            s = (k[b, keys] @ q[b, i]) * scale
            if kernel == "softmax":
                s = s + bias[b, i, keys]
                p = torch.exp(s - s.max())
                p = p / p.sum()
            elif kernel == "laplace":
                p = torch.special.ndtr((s / len(keys) + bias[b, i, keys] - LAPLACE_MU) / LAPLACE_SIGMA)
            else:
                p = torch.clamp(s / len(keys) + bias[b, i, keys], min=0) ** 2
            out[b, i] = (p[:, None] * v[b, keys]).sum(dim=0)
    return out.reshape(*lead, lq, v.shape[-1])


def _check_chunk(chunk: int) -> None:
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"block_biased_attention: chunk={chunk!r} must be a positive integer")


def _check_block_bias(bias: Tensor | None, chunk: int) -> None:
    if bias is not None and tuple(bias.shape) != (chunk, chunk):
        raise ValueError(f"block_biased_attention: bias must have shape (chunk, chunk) = ({chunk}, {chunk}), got "
                         f"{tuple(bias.shape)}")


def block_biased_attention(q: Tensor, k: Tensor, v: Tensor, *, chunk: int, causal: bool = True,
                           valid: Tensor | None = None, bias: Tensor | None = None, kernel: Kernel = "softmax",
                           scale: float | None = None) -> Tensor:
    """Chunked attention with an in-chunk bias. q, k: (B, H, L, d), v: (B, H, L, dv), valid: bool (B, L) or None,
    bias: (chunk, chunk) or None, bias[i, j] between the i-th (query) and j-th (key) valid token of a chunk (its
    top-left corner when the sequence is shorter than a chunk) -> (B, H, L, dv), 0 at masked positions."""
    _check_chunk(chunk)
    _check_block_bias(bias, chunk)

    def attend(q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
        c = q.shape[-2]
        return biased_attention(q, k, v, visible, bias=None if bias is None else bias[:c, :c], kernel=kernel,
                                scale=scale)

    return chunked_attention(attend, q, k, v, chunk=chunk, causal=causal, valid=valid)


def block_biased_attention_ref(q: Tensor, k: Tensor, v: Tensor, *, chunk: int, causal: bool = True,
                               valid: Tensor | None = None, bias: Tensor | None = None, kernel: Kernel = "softmax",
                               scale: float | None = None) -> Tensor:
    """Oracle: the dense visibility matrix over valid-token ranks (same chunk, and j <= i when causal) and the dense
    bias bias[rank_i mod chunk, rank_j mod chunk], through ``biased_attention_ref``."""
    _check_chunk(chunk)
    _check_block_bias(bias, chunk)
    if valid is None:
        valid = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
    rank = valid.long().cumsum(dim=1) - 1
    ri, rj = rank[:, :, None], rank[:, None, :]
    visible = (ri // chunk == rj // chunk) & valid[:, :, None] & valid[:, None, :]
    if causal:
        visible = visible & (rj <= ri)
    dense = None if bias is None else bias[ri % chunk, rj % chunk].masked_fill(~visible, 0.0)[:, None]
    return biased_attention_ref(q, k, v, visible[:, None], bias=dense, kernel=kernel, scale=scale)
