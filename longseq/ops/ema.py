"""MEGA's multi-dimensional damped EMA (Ma et al., 2023): a real diagonal linear recurrence, in kernel and step form.

Each channel j of x: (B, L, D) expands to h sub-states (h = ``ndim``):

    s_t = α ⊙ β x_t + (1 - α ⊙ δ) ⊙ s_{t-1},     EMA(x)_t = η · s_t / sqrt(h)

with α, δ ∈ (0, 1)^h the sigmoids of free parameters, β, η ∈ R^h. Names follow the paper; the reference code
swaps them (its ``delta`` is α, its ``alpha`` is δ, its ``gamma`` is η). The same system is a convolution with

    k_l = sum_n η_n α_n β_n q_n^l / sqrt(h),   q = 1 - α δ,

computed in log space (q^l = exp(l log q), with log q = log1p(-α δ), exponents in float64), so a long kernel
neither overflows nor loses the slow modes (|q| < 1: powers only shrink). The step form (``ema_recurrence``) feeds
``longseq.ops.lti_recurrence.lti_step`` as real diagonal modes; ``ema_ref`` is the explicit loop both are tested
against. Parameters: (D, h) each; computation in float32 at least.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longseq.ops.precision import compute_dtype
from longseq.ops.ssm_kernel import vandermonde


def _coefficients(alpha: Tensor, delta: Tensor, beta: Tensor, eta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits α, δ and β, η: (D, h) -> (log q, input weight α β, output weight η / sqrt(h)), each (D, h)."""
    if not alpha.shape == delta.shape == beta.shape == eta.shape or alpha.dim() != 2:
        shapes = [tuple(t.shape) for t in (alpha, delta, beta, eta)]
        raise ValueError(f"ema: alpha, delta, beta, eta must all have shape (D, h), got {shapes}")
    dtype = compute_dtype(alpha, delta, beta, eta)
    a, d = torch.sigmoid(alpha.to(dtype)), torch.sigmoid(delta.to(dtype))
    return torch.log1p(-a * d), a * beta.to(dtype), eta.to(dtype) / math.sqrt(alpha.shape[1])


def ema_kernel(alpha: Tensor, delta: Tensor, beta: Tensor, eta: Tensor, length: int) -> Tensor:
    """The EMA's convolution kernel: (D, length), k[:, l] = sum_n η α β q^l / sqrt(h)."""
    log_q, p, c = _coefficients(alpha, delta, beta, eta)
    # The chunked Vandermonde product of S4D: q^l = q^(i·b) q^j, one matmul over the modes, so that neither the
    # (D, h, L) powers nor D·h·L exponentials are ever formed.
    return vandermonde((p * c).to(torch.complex128), log_q.to(torch.complex128), length, None, log_q.dtype)


def ema_recurrence(alpha: Tensor, delta: Tensor, beta: Tensor, eta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The step form for ``lti_step`` (real diagonal modes): (dA = q, dB = α β, C = η / sqrt(h)), each (D, h)."""
    log_q, p, c = _coefficients(alpha, delta, beta, eta)
    return log_q.exp(), p, c


def ema_ref(x: Tensor, alpha: Tensor, delta: Tensor, beta: Tensor, eta: Tensor) -> Tensor:
    """Oracle: the recurrence as written in the paper, token by token. x: (B, L, D) -> EMA(x): (B, L, D)."""
    a, d = torch.sigmoid(alpha), torch.sigmoid(delta)
    s = x.new_zeros(x.shape[0], *alpha.shape)
    ys = []
    for t in range(x.shape[1]):
        s = a * beta * x[:, t, :, None] + (1 - a * d) * s
        ys.append((eta * s).sum(-1) / math.sqrt(alpha.shape[1]))
    return torch.stack(ys, dim=1)
