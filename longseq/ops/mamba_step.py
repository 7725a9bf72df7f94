"""Whole Mamba and Mamba-2 blocks for one token (decoding), projections included: ``mamba_block_step`` and
``mamba2_block_step``, each the composition of its block's ops, and one compiled call
(``longseq.kernels.selective_scan.block_step``, ``longseq.kernels.recurrence.mamba2_block_step``) where it applies.

At d_model 256 a token's arithmetic is a few microseconds and the ~15 PyTorch calls of the composition cost more
than that in dispatch; the compiled form runs the projections, the short convolution, softplus, the state update and
the gate in one C++ call. The composition is the oracle (tests compare the two in float64).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.kernels import recurrence
from longseq.kernels import selective_scan as compiled
from longseq.ops.selective_scan import selective_state_update
from longseq.ops.short_conv import causal_conv1d_update
from longseq.ops.ssd import ssd_block_step


class MambaStepWeights(NamedTuple):
    """A Mamba block's parameters as ``mamba_block_step`` reads them (E = expand · d_model, R = dt_rank)."""

    in_proj_weight: Tensor  # (2E, d_model)
    in_proj_bias: Tensor | None  # (2E,)
    conv_weight: Tensor  # (E, W)
    conv_bias: Tensor | None  # (E,)
    x_proj_weight: Tensor  # (R + 2N, E)
    dt_proj_weight: Tensor  # (E, R)
    dt_proj_bias: Tensor  # (E,)
    A: Tensor  # (E, N), A = -exp(A_log)
    D: Tensor | None  # (E,)
    out_proj_weight: Tensor  # (d_model, E)
    out_proj_bias: Tensor | None  # (d_model,)


def mamba_block_step(u_t: Tensor, conv_state: Tensor, state: Tensor, weights: MambaStepWeights,
                     mask_t: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A whole Mamba block for one token (decoding): u_t: (B, d_model), conv_state: (B, E, W-1), state: (B, E, N),
    mask_t: bool (B,) -> (y_t: (B, d_model), the new conv state, the new state); functional (new tensors).

        x | z = in_proj(u);  x = silu(causal_conv1d_update(x));  dt | B | C = x_proj(x)
        delta = softplus(dt_proj(dt)), 0 where masked;  y, state = selective_state_update(state, x, delta, A, B, C,
        D, z);  y = out_proj(y), 0 where masked

    A masked row keeps both states (the convolution skips it, delta = 0) and outputs 0. Outside autograd and
    autocast, with every tensor on the CPU in one dtype (float32 or float64) and the kernel available, this is one
    compiled call (``longseq.kernels.selective_scan.block_step``); otherwise the composition above."""
    try:
        fused = compiled.block_step(u_t, conv_state, state, weights, mask_t)
    except RuntimeError:  # the kernel checks shapes itself (per token, cheaper there): say which argument is wrong
        _check_block_step(u_t, conv_state, state, weights, mask_t)
        raise
    if fused is not None:
        return fused[0], fused[1], fused[2]
    rank, n = _check_block_step(u_t, conv_state, state, weights, mask_t)
    w = weights
    x, z = F.linear(u_t, w.in_proj_weight, w.in_proj_bias).chunk(2, dim=-1)
    x, conv_state = causal_conv1d_update(x, conv_state, w.conv_weight, w.conv_bias, activation="silu", mask_t=mask_t)
    dt, b, c = F.linear(x, w.x_proj_weight).split([rank, n, n], dim=-1)
    delta = F.softplus(F.linear(dt, w.dt_proj_weight, w.dt_proj_bias))
    delta = delta if mask_t is None else delta * mask_t[:, None]
    y, state = selective_state_update(state, x, delta, w.A, b, c, D=w.D, z=z)
    y = F.linear(y, w.out_proj_weight, w.out_proj_bias)
    return (y if mask_t is None else y.masked_fill(~mask_t[:, None], 0.0)), conv_state, state


def _check_block_step(u_t: Tensor, conv_state: Tensor, state: Tensor, weights: MambaStepWeights,
                      mask_t: Tensor | None) -> tuple[int, int]:
    """``mamba_block_step``'s shapes, each named when wrong -> (R, N)."""
    for name, t, dims in (("A", weights.A, 2), ("dt_proj_weight", weights.dt_proj_weight, 2),
                          ("conv_weight", weights.conv_weight, 2), ("out_proj_weight", weights.out_proj_weight, 2)):
        if t.dim() != dims:
            raise ValueError(f"mamba_block_step: {name} must have {dims} dimensions, got shape {tuple(t.shape)}")
    e, n = weights.A.shape
    rank, width, batch = weights.dt_proj_weight.shape[1], weights.conv_weight.shape[1], u_t.shape[0]
    d_model = weights.out_proj_weight.shape[0]
    w = weights
    expected = {"u_t": (u_t, (batch, d_model)), "conv_state": (conv_state, (batch, e, width - 1)),
                "state": (state, (batch, e, n)), "in_proj_weight": (w.in_proj_weight, (2 * e, d_model)),
                "in_proj_bias": (w.in_proj_bias, (2 * e,)), "conv_weight": (w.conv_weight, (e, width)),
                "conv_bias": (w.conv_bias, (e,)), "x_proj_weight": (w.x_proj_weight, (rank + 2 * n, e)),
                "dt_proj_weight": (w.dt_proj_weight, (e, rank)), "dt_proj_bias": (w.dt_proj_bias, (e,)),
                "D": (w.D, (e,)), "out_proj_weight": (w.out_proj_weight, (d_model, e)),
                "out_proj_bias": (w.out_proj_bias, (d_model,))}
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"mamba_block_step: {name} must have shape {shape} (from A: (E, N) = ({e}, {n}), "
                             f"dt_proj_weight: (E, R), conv_weight: (E, W), out_proj_weight: (d_model, E)), got "
                             f"{tuple(t.shape)}")
    if mask_t is not None and (mask_t.dtype != torch.bool or mask_t.shape != (batch,)):
        raise ValueError(f"mamba_block_step: mask_t must be bool of shape ({batch},), got {mask_t.dtype} "
                         f"{tuple(mask_t.shape)}")
    return rank, n


def mamba2_block_step(u_t: Tensor, conv_state: Tensor, state: Tensor, *, in_proj_weight: Tensor,
                      in_proj_bias: Tensor | None, out_proj_weight: Tensor, out_proj_bias: Tensor | None,
                      conv_weight: Tensor, conv_bias: Tensor | None, dt_bias: Tensor, A: Tensor, D: Tensor | None,
                      norm_weight: Tensor, norm_eps: float, norm_group_size: int, ngroups: int,
                      mask_t: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A whole Mamba-2 block for one token: u_t: (B, d_model) -> (y_t: (B, d_model), the new conv state, the new
    state); ``y = out_proj(ssd_block_step(in_proj(u_t), ...))``, 0 where masked (``ops.ssd.ssd_block_step`` has the
    other arguments). Outside autograd and autocast, with every tensor on the CPU in one dtype (float32 or float64)
    and the kernel available, one compiled call; otherwise that composition, which also names a wrong shape."""
    kwargs = dict(conv_weight=conv_weight, conv_bias=conv_bias, dt_bias=dt_bias, A=A, D=D, norm_weight=norm_weight,
                  norm_eps=norm_eps, norm_group_size=norm_group_size, ngroups=ngroups, mask_t=mask_t)
    try:
        fused = recurrence.mamba2_block_step(u_t, conv_state, state, in_proj_weight=in_proj_weight,
                                             in_proj_bias=in_proj_bias, out_proj_weight=out_proj_weight,
                                             out_proj_bias=out_proj_bias, **kwargs)
    except RuntimeError:  # the kernel's own shape checks: the composition's say which argument is wrong
        with torch.no_grad():
            _mamba2_composition(u_t, conv_state, state, in_proj_weight, in_proj_bias, out_proj_weight,
                                out_proj_bias, kwargs)
        raise
    if fused is not None:
        return fused
    return _mamba2_composition(u_t, conv_state, state, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                               kwargs)


def _mamba2_composition(u_t: Tensor, conv_state: Tensor, state: Tensor, in_proj_weight: Tensor,
                        in_proj_bias: Tensor | None, out_proj_weight: Tensor, out_proj_bias: Tensor | None,
                        kwargs: dict) -> tuple[Tensor, Tensor, Tensor]:
    y, conv_state, state = ssd_block_step(F.linear(u_t, in_proj_weight, in_proj_bias), conv_state, state, **kwargs)
    y = F.linear(y, out_proj_weight, out_proj_bias)
    mask_t = kwargs["mask_t"]
    return (y if mask_t is None else y.masked_fill(~mask_t[:, None], 0.0)), conv_state, state
