"""Nyström approximation of softmax attention (Xiong et al. 2021) and its pieces.

With landmarks q~, k~ (m segment means of the queries and keys, ``ops/landmarks.py``) the L x L softmax matrix
S = softmax(Q Kᵀ) is approximated through three small softmax matrices:

    F = softmax(Q K~ᵀ) (L x m),  A = softmax(Q~ K~ᵀ) (m x m),  B = softmax(Q~ Kᵀ) (m x L)
    out = F · pinv(A) · (B V)            O(L m d + m³), evaluated right to left

pinv(A) is the Moore–Penrose pseudo-inverse, which the paper approximates by a Newton–Schulz iteration
(``iterative_pinv``, 6 steps): Z ← ¼ Z (13 I − A Z (15 I − A Z (7 I − A Z))), from Z₀ = Aᵀ / (‖A‖₁ ‖A‖∞) (max column
sum times max row sum; the row sums of a softmax are 1, so this is the paper's Aᵀ / max column sum). The norms are
taken per matrix: one scale for the whole batch (as in the paper's code) would make a row depend on another row.

Logits carry ``scale`` (default d^-1/2): the paper scales q and k by d^-1/4 each, which is the same, since the
landmarks are means (a linear map) of q and k. Masks: ``k_valid`` excludes keys from B (and so from every output);
the landmarks must already come from valid tokens only. Computed in float32 at least; out has q's dtype.

``depthwise_conv_same``: the optional skip of the paper's code, a depthwise convolution of the values along the
sequence with one centred kernel per head, over each row's valid tokens only (packed, ``ops/pack.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.ops.masked_softmax import masked_softmax
from longseq.ops.pack import pack, unpack
from longseq.ops.precision import compute_dtype

PINV_ITERATIONS = 6  # the paper's


def pinv_ref(a: Tensor) -> Tensor:
    """The oracle: the exact Moore–Penrose pseudo-inverse of each matrix of a: (..., m, m)."""
    return torch.linalg.pinv(a)


def iterative_pinv(a: Tensor, n_iter: int = PINV_ITERATIONS) -> Tensor:
    """Newton–Schulz approximation of pinv(a) for a: (..., m, m) (see the module docstring)."""
    if not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"iterative_pinv: n_iter={n_iter!r} must be a non-negative integer")
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"iterative_pinv: a must have shape (..., m, m), got {tuple(a.shape)}")
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    col = a.abs().sum(dim=-2).amax(dim=-1)  # ‖A‖₁, per matrix
    row = a.abs().sum(dim=-1).amax(dim=-1)  # ‖A‖∞
    z = a.transpose(-1, -2) / (col * row)[..., None, None]
    for _ in range(n_iter):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _check(fn: str, q: Tensor, k: Tensor, v: Tensor, q_land: Tensor, k_land: Tensor) -> None:
    ok = (q.dim() == k.dim() == v.dim() == q_land.dim() == k_land.dim() >= 3 and k.shape[:-1] == v.shape[:-1]
          and q_land.shape == k_land.shape and q.shape[-1] == k.shape[-1] == q_land.shape[-1])
    if not ok:
        raise ValueError(f"{fn}: expected q: (..., L, d), k: (..., L, d), v: (..., L, dv), landmarks: (..., m, d); "
                         f"got {[tuple(t.shape) for t in (q, k, v, q_land, k_land)]}")


def _kernels(q: Tensor, k: Tensor, q_land: Tensor, k_land: Tensor, k_valid: Tensor | None,
             scale: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """F: (..., L, m), A: (..., m, m), B: (..., m, L) in the compute dtype."""
    dtype = compute_dtype(q, k)
    q, k, q_land, k_land = (t.to(dtype) for t in (q, k, q_land, k_land))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    keep = None if k_valid is None else k_valid.view(k_valid.shape[0], *[1] * (k.dim() - 3), 1, k.shape[-2])
    return (torch.softmax(scale * q @ k_land.transpose(-1, -2), dim=-1),
            torch.softmax(scale * q_land @ k_land.transpose(-1, -2), dim=-1),
            masked_softmax(scale * q_land @ k.transpose(-1, -2), keep, dim=-1))


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, q_land: Tensor, k_land: Tensor, *,
                      k_valid: Tensor | None = None, n_iter: int = PINV_ITERATIONS,
                      scale: float | None = None) -> Tensor:
    """q: (B, ..., L, d), k: (B, ..., L, d), v: (B, ..., L, dv), q_land, k_land: (B, ..., m, d), k_valid: bool (B, L)
    -> (B, ..., L, dv): F · iterative_pinv(A) · (B V), right to left."""
    _check("nystrom_attention", q, k, v, q_land, k_land)
    f, a, b = _kernels(q, k, q_land, k_land, k_valid, scale)
    vc = v.to(f.dtype)
    if k_valid is not None:  # a masked value gets weight 0 from B; zeroing it keeps garbage out of 0 · x
        vc = vc.masked_fill(~k_valid.view(k_valid.shape[0], *[1] * (v.dim() - 3), -1, 1), 0.0)
    return (f @ (iterative_pinv(a, n_iter) @ (b @ vc))).to(v.dtype)


def nystrom_attention_ref(q: Tensor, k: Tensor, v: Tensor, q_land: Tensor, k_land: Tensor, *,
                          k_valid: Tensor | None = None, scale: float | None = None) -> Tensor:
    """The oracle: the paper's formula as written, F · pinv(A) · B · V left to right with the exact pseudo-inverse
    (so the iterative form matches it once its iteration has converged)."""
    _check("nystrom_attention_ref", q, k, v, q_land, k_land)
    f, a, b = _kernels(q, k, q_land, k_land, k_valid, scale)
    return (f @ pinv_ref(a) @ b @ v.to(f.dtype)).to(v.dtype)


def depthwise_conv_same(v: Tensor, weight: Tensor, valid: Tensor | None = None) -> Tensor:
    """v: (B, H, L, d), weight: (H, K) with K odd, valid: bool (B, L) -> (B, H, L, d):
    y[t] = sum_i weight[h, i] · v[t + i - (K-1)/2] over each row's valid tokens (zeros beyond them); 0 at masked
    positions."""
    if weight.dim() != 2 or weight.shape[0] != v.shape[1] or weight.shape[1] % 2 == 0:
        raise ValueError(f"depthwise_conv_same: weight must have shape (H, K) with H = {v.shape[1]} and K odd, "
                         f"got {tuple(weight.shape)}")
    x = v if valid is None else pack(v, valid, dim=2)
    y = F.conv2d(x, weight.to(x.dtype)[:, None, :, None], padding=(weight.shape[1] // 2, 0), groups=v.shape[1])
    return y if valid is None else unpack(y, valid, dim=2)


def depthwise_conv_same_ref(v: Tensor, weight: Tensor, valid: Tensor | None = None) -> Tensor:
    """Oracle: per row and output token, the explicit sum over its neighbours among the row's valid tokens."""
    out = torch.zeros_like(v)
    half = weight.shape[1] // 2
    for b in range(v.shape[0]):
        where = torch.arange(v.shape[2]) if valid is None else valid[b].nonzero().flatten()
        for rank, t in enumerate(where.tolist()):
            for i in range(weight.shape[1]):
                j = rank + i - half
                if 0 <= j < len(where):
                    out[b, :, t] = out[b, :, t] + weight[:, i, None] * v[b, :, int(where[j])]
    return out
