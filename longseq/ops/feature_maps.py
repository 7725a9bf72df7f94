"""Feature maps phi for linear attention: softmax(q k^T) is replaced by phi(q) phi(k)^T, which reassociates into
O(L) time and a constant-size state. x: (..., d) -> phi(x): (..., m).

- ``elu_plus_one`` (Katharopoulos et al. 2020) and ``relu_feature``: cheap, positive (relu: non-negative).
- ``cos_reweighted`` (cosFormer, Qin et al. 2022): features phi (ReLU) re-weighted by their token's position so that
  phi'(q_i) . phi'(k_j) = (phi(q_i) . phi(k_j)) cos(pi (i - j) / 2M), a locality bias that stays decomposable.
- FAVOR+ positive random features (Performer, Choromanski et al. 2021): phi(x)_i = exp(w_i.x - |x|^2/2) / sqrt(m)
  with gaussian rows w_i, an unbiased estimate of the softmax kernel: E[phi(q).phi(k)] = exp(q.k). Scaling q and k
  by d^(-1/4) (softmax's 1/sqrt(d)) is the caller's job.

Stabilizing FAVOR+: the exponent w.x - |x|^2/2 = (|w|^2 - |w - x|^2)/2 is at most |w|^2/2, but all the
exponents of a long token are very negative, so its features underflow to 0 (a normaliser of 0/0), and half
precision can overflow. A constant c may be subtracted in the exponent, which scales the features by exp(-c).
Linear attention normalises, out_i = phi(q_i).S / phi(q_i).z with S = sum_j phi(k_j) v_j^T and
z = sum_j phi(k_j), so:
- for a query any positive factor cancels — a per-query constant is exact ("per_token": each query's own largest
  exponent, so its largest feature is 1/sqrt(m));
- for keys the factor must be the same for every key a query sees: a per-key constant would reweight the keys.
  A max over all keys of the sequence is shared but depends on the whole sequence: a causal model's early
  outputs would depend (through rounding, underflow) on future tokens, and a stream cannot know it. So keys take
  only a fixed constant (a float) or none.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Stabilizer = Literal["none", "per_token"] | float


def elu_plus_one(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0, elementwise."""
    return F.elu(x) + 1


def relu_feature(x: Tensor) -> Tensor:
    """phi(x) = relu(x) >= 0, elementwise. All features of a token can be 0, so the normaliser phi(q).z can be 0:
    adding an eps to it is the caller's job."""
    return F.relu(x)


def cos_reweighted(phi: Tensor, positions: Tensor, span: Tensor | float) -> Tensor:
    """cosFormer's re-weighting by the sin/cos decomposition: phi: (B, H, L, m), positions: (B, L) integers (cosFormer
    counts from 1), span M: (B,) or a number -> (B, H, L, 2m) = [phi sin(pi i / 2M), phi cos(pi i / 2M)]. Since
    cos(a - b) = cos a cos b + sin a sin b, the dot product of a query's and a key's re-weighted features is their
    plain dot product times cos(pi (i - j) / 2M), in [0, 1] for |i - j| <= M: the caller keeps positions in 1..M.

    Angles and products in float32 at least (float64 stays float64: positions in the thousands lose their phase in
    half precision); the result has phi's dtype."""
    if phi.dim() != 4 or tuple(positions.shape) != (phi.shape[0], phi.shape[2]):
        raise ValueError(f"cos_reweighted: phi must have shape (B, H, L, m) and positions (B, L), got "
                         f"{tuple(phi.shape)} and {tuple(positions.shape)}")
    dtype = torch.promote_types(phi.dtype, torch.float32)
    span = torch.as_tensor(span, dtype=dtype, device=phi.device)
    if span.dim() not in (0, 1) or (span.dim() == 1 and span.shape[0] != phi.shape[0]):
        raise ValueError(f"cos_reweighted: span must be a number or have shape (B,) = ({phi.shape[0]},), "
                         f"got {tuple(span.shape)}")
    angles = (math.pi / 2) * positions.to(dtype) / (span[:, None] if span.dim() else span)  # (B, L)
    angles = angles[:, None, :, None]
    p = phi.to(dtype)
    return torch.cat((p * angles.sin(), p * angles.cos()), dim=-1).to(phi.dtype)


def orthogonal_gaussian_matrix(n_features: int, dim: int, generator: torch.Generator | None = None, *,
                               device: torch.device | str | None = None,
                               dtype: torch.dtype = torch.float32) -> Tensor:
    """(n_features, dim) projection for FAVOR+: stacked blocks of dim orthogonal rows (the last block cut short),
    each row rescaled by the norm of an independent gaussian vector (chi-distributed with dim degrees of freedom),
    so each row is marginally N(0, I) while rows of a block stay orthogonal — lower variance than i.i.d. rows.

    Drawn on the CPU in float64 from ``generator`` (None: torch's global RNG), then moved to device/dtype, so a
    seed gives the same matrix on every device.
    """
    for name, value in (("n_features", n_features), ("dim", dim)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"orthogonal_gaussian_matrix: {name}={value!r} must be a positive integer")
    gaussian = torch.randn(math.ceil(n_features / dim), dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # QR's sign convention is not random; flipping columns by sign(diag R) makes each q Haar-distributed.
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    directions = q.transpose(-2, -1).reshape(-1, dim)[:n_features]  # the columns of each q, as rows
    norms = torch.randn(n_features, dim, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (directions * norms).to(device=device, dtype=dtype)


def positive_random_features(x: Tensor, projection: Tensor, *, is_query: bool,
                             stabilizer: Stabilizer = "none") -> Tensor:
    """FAVOR+ features: x: (..., d), projection: (m, d) -> phi(x): (..., m) in x's dtype, computed in float32 at
    least. ``stabilizer`` (see the module docstring): "none"; "per_token" (queries only); or a float c subtracted
    from every exponent (any tokens)."""
    if projection.dim() != 2 or projection.shape[1] != x.shape[-1]:
        raise ValueError(f"positive_random_features: projection must have shape (m, d) with d = {x.shape[-1]} "
                         f"(x's last dim), got {tuple(projection.shape)}")
    if stabilizer == "per_token" and not is_query:
        raise ValueError("positive_random_features: stabilizer='per_token' is not allowed for keys (is_query=False): "
                         "a per-key factor reweights the keys; allowed for keys: 'none' or a float constant")
    if not (stabilizer in ("none", "per_token") or isinstance(stabilizer, float | int)):
        raise ValueError(f"positive_random_features: stabilizer={stabilizer!r} is not allowed; "
                         f"allowed: 'none', 'per_token' (queries), a float constant")
    dtype = torch.promote_types(x.dtype, torch.float32)
    xc = x.to(dtype)
    logits = xc @ projection.to(dtype).T - xc.pow(2).sum(dim=-1, keepdim=True) / 2  # (..., m)
    if stabilizer == "per_token":
        # detach: the constant cancels in the attention output, so it must not carry a gradient of its own.
        logits = logits - logits.amax(dim=-1, keepdim=True).detach()
    elif stabilizer != "none":
        logits = logits - stabilizer
    return (torch.exp(logits) / math.sqrt(projection.shape[0])).to(x.dtype)
