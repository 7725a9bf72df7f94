"""The step mode of linear time-invariant state-space layers (S4, S4D): x_k = dA x_{k-1} + dB u_k, y_k = Re(C x_k).

The convolution mode (``longseq.ops.ssm_kernel`` + ``fft_conv``) computes a whole sequence from a zero state; this
is the recurrence that continues from any state, one token at a time, for streaming and decoding. Its oracle is
the convolution mode itself (tests/ops/test_ops_lti_recurrence.py): the same K_l = Re(C dA^l dB).

Two shapes of dA, one function:
- diagonal (S4D): dA, dB, C: (H, M) complex (or real for real modes), the state x: (B, H, M); y = f·Re(C x),
  f = 2 for complex modes (their conjugate partners are implicit), 1 for real modes.
- dense (S4, conj-augmented): dA: (H, N, N) complex, dB, C: (H, N) with N = 2M. The state of a real system in this
  basis is [x, conj x], so only the kept half x: (B, H, M) is stored; each step rebuilds the whole and keeps half.

A masked step (mask False) leaves the state unchanged and outputs 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lti_step(x: Tensor, u_t: Tensor, dA: Tensor, dB: Tensor, C: Tensor,
             mask_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token: x: (B, H, M) state, u_t: (B, H) real -> (y_t: (B, H) real, new state). Functional: the arguments
    are not modified."""
    dense = dA.dim() == 3
    u = u_t.to(dA.real.dtype)[..., None]
    if dense:
        full = torch.cat([x, x.conj()], dim=-1)
        new = (torch.einsum("hnm,bhm->bhn", dA, full) + dB * u)[..., : x.shape[-1]]
        c = C[..., : x.shape[-1]]
    else:
        new, c = dA * x + dB * u, C
    factor = 2.0 if (dense or x.is_complex()) else 1.0
    y = factor * (c * new).sum(-1).real
    if mask_t is not None:
        new = torch.where(mask_t[:, None, None], new, x)
        y = y.masked_fill(~mask_t[:, None], 0.0)
    return y.to(u_t.dtype), new


def lti_scan(u: Tensor, x0: Tensor, dA: Tensor, dB: Tensor, C: Tensor,
             mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """u: (B, H, T) real, x0: (B, H, M) -> (y: (B, H, T), the state after the last token): ``lti_step`` per token."""
    ys, x = [], x0
    for t in range(u.shape[-1]):
        y_t, x = lti_step(x, u[..., t], dA, dB, C, None if mask is None else mask[:, t])
        ys.append(y_t)
    return torch.stack(ys, dim=-1), x
