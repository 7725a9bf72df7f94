"""Mamba-2 (Dao & Gu, 2024): multi-head state-space duality (SSD), a scalar decay per head.

One pass (the reference's Mamba2Simple), with E = expand · d_model inner channels in H = E / headdim heads:

    z, xBC, dt = in_proj(u)                    z: (B, L, E); xBC: x (E) | B (G·N) | C (G·N); dt: (B, L, H)
    x, B, C    = silu(short_conv(xBC))          one causal depthwise convolution over the concatenation
    dt         = softplus(dt + dt_bias)         dt_bias set so dt starts log-uniform in [dt_min, dt_max]
    S_t        = exp(dt_t A_h) S_{t-1} + dt_t x_t ⊗ B_t       per head: S: (P, N), A_h = -exp(A_log_h) < 0
    y_t        = S_t C_t + D_h x_t
    out        = out_proj(gated_rms_norm(y, z))  normalise y · silu(z)

B and C are shared by the heads of a group (G groups). The scan is ``longseq.ops.ssd.ssd_chunked`` (Mamba-2's
chunked algorithm, stable segment sums) or its loop oracle (``impl="ref"``); decoding uses ``mamba2_block_step``
(the whole block for one token: projections, conv, dt, SSD update and gated norm).
A padded token gets dt = 0 (no decay, no input) and is skipped by the short convolution: an exact no-op on both
states. ``A_log``, ``D`` and ``dt_bias`` carry no weight decay. The non-causal form adds a second pass over the
reversed sequence (``_passes``); cross patterns are refused.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.mixers._passes import ConvScanState, PassMixer, scan_dtype
from longseq.mixers.base import InvalidHyper, Pattern, PositiveFloat, PositiveInt, check_ordered
from longseq.mixers.registry import register
from longseq.modules import GatedRMSNorm, ShortConv, ShortConvState
from longseq.modules.optim import set_optim
from longseq.modules.ssm_init import dt_bias
from longseq.ops.mamba_step import mamba2_block_step
from longseq.ops.ssd import ssd_chunked, ssd_ref


class Mamba2Pass(nn.Module):
    """One causal pass of the block: ``forward(x, mask, state) -> (y, state)`` over a chunk, ``step`` one token."""

    def __init__(self, d_model: int, *, d_state: int, d_conv: int, expand: int, headdim: int, ngroups: int,
                 dt_min: float, dt_max: float, dt_init_floor: float, a_init_range: tuple[float, float], bias: bool,
                 conv_bias: bool, norm_eps: float, impl: str, chunk_size: int) -> None:
        super().__init__()
        self.d_inner, self.d_state, self.ngroups, self.headdim = expand * d_model, d_state, ngroups, headdim
        self.nheads = self.d_inner // headdim
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=bias)
        self.conv = ShortConv(conv_dim, d_conv, bias=conv_bias, activation="silu")
        self.dt_bias = nn.Parameter(dt_bias(self.nheads, dt_min, dt_max, dt_init_floor))
        a = torch.empty(self.nheads).uniform_(*a_init_range)
        self.A_log = set_optim(nn.Parameter(a.log()), weight_decay=0.0)
        self.D = set_optim(nn.Parameter(torch.ones(self.nheads)), weight_decay=0.0)
        self.norm = GatedRMSNorm(self.d_inner, eps=norm_eps, norm_before_gate=False, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.scan = ssd_ref if impl == "ref" else functools.partial(ssd_chunked, chunk_size=chunk_size)

    def init_state(self, batch: int) -> ConvScanState:
        shape = (batch, self.nheads, self.headdim, self.d_state)
        ssm = torch.zeros(shape, device=self.D.device, dtype=scan_dtype(self.D.dtype))
        return ConvScanState(conv=self.conv.init_state(batch), ssm=ssm)

    def _split(self, zxbcdt: Tensor, state: ConvScanState,
               mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, ConvScanState]:
        """in_proj's output (B, T, ·) -> z, x: (B, T, H, P), B, C: (B, T, G, N), dt: (B, T, H) zero where masked,
        and the new conv state."""
        z, xbc, dt = zxbcdt.split([self.d_inner, self.conv.d, self.nheads], dim=-1)
        xbc, conv = self.conv.forward_stream(xbc, state.conv, mask)
        x, b, c = xbc.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        dt = dt if mask is None else dt * mask[..., None]
        groups = (*b.shape[:-1], self.ngroups, self.d_state)
        return z, x.unflatten(-1, (self.nheads, self.headdim)), b.view(groups), c.view(groups), dt, conv

    def _output(self, y: Tensor, z: Tensor, mask: Tensor | None) -> Tensor:
        y = self.out_proj(self.norm(y.flatten(-2), z))
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)

    def forward(self, u: Tensor, mask: Tensor | None, state: ConvScanState) -> tuple[Tensor, ConvScanState]:
        """u: (B, T, d_model), mask: bool (B, T) -> y: (B, T, d_model), 0 where masked; the state after u."""
        z, x, b, c, dt, conv = self._split(self.in_proj(u), state, mask)
        y, ssm = self.scan(x, dt, -self.A_log.exp(), b, c, D=self.D, initial_states=state.ssm,
                           return_final_states=True)
        return self._output(y, z, mask), ConvScanState(conv=conv, ssm=ssm)

    def step(self, u_t: Tensor, state: ConvScanState, mask_t: Tensor | None) -> tuple[Tensor, ConvScanState]:
        """u_t: (B, d_model), mask_t: bool (B,) -> y_t: (B, d_model); the state after it. The whole block is one op
        (``mamba2_block_step``: one compiled call when kernels are available)."""
        y, window, ssm = mamba2_block_step(
            u_t, state.conv.window, state.ssm, in_proj_weight=self.in_proj.weight, in_proj_bias=self.in_proj.bias,
            out_proj_weight=self.out_proj.weight, out_proj_bias=self.out_proj.bias, conv_weight=self.conv.weight,
            conv_bias=self.conv.bias, dt_bias=self.dt_bias, A=-self.A_log.exp(), D=self.D,
            norm_weight=self.norm.weight, norm_eps=self.norm.eps, norm_group_size=self.norm.group_size,
            ngroups=self.ngroups, mask_t=mask_t)
        return y, ConvScanState(conv=ShortConvState(window=window), ssm=ssm)


@register("mamba2")
class Mamba2(PassMixer):
    complexity = "O(L d (N + chunk))"
    state_formula = "expand·d·d_state + (expand·d + 2·ngroups·d_state)·(d_conv − 1) (SSM state and conv window)"
    test_hypers = ({"d_state": 4, "headdim": 8, "chunk_size": 8},
                   {"d_state": 4, "headdim": 8, "ngroups": 2, "impl": "ref"})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        d_state: PositiveInt = 64,
        d_conv: PositiveInt = 4,
        expand: PositiveInt = 2,
        headdim: PositiveInt | None = None,
        ngroups: PositiveInt = 1,
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 0.1,
        dt_init_floor: PositiveFloat = 1e-4,
        a_init_min: PositiveFloat = 1.0,
        a_init_max: PositiveFloat = 16.0,
        bias: bool = False,
        conv_bias: bool = True,
        norm_eps: PositiveFloat = 1e-5,
        impl: Literal["chunked", "ref"] = "chunked",
        chunk_size: PositiveInt = 64,
    ) -> None:
        """headdim: P, the channels of a head (expand · d_model must be divisible by it; default 64, or
        expand · d_model when that is smaller: one head); ngroups: G, heads sharing
        B and C (must divide the number of heads). A starts uniform in [a_init_min, a_init_max] (negated).
        norm_eps: the gated RMSNorm's epsilon (checkpoints set it: transformers' ``layer_norm_epsilon``).
        impl: "chunked" (SSD, chunks of ``chunk_size``) or "ref" (the loop over time)."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        d_inner = expand * d_model
        headdim = min(64, d_inner) if headdim is None else headdim
        if d_inner % headdim:
            raise InvalidHyper(f"mixer 'mamba2': expand·d_model={d_inner} is not divisible by headdim={headdim}")
        if (d_inner // headdim) % ngroups:
            raise InvalidHyper(f"mixer 'mamba2': the {d_inner // headdim} heads are not divisible by "
                               f"ngroups={ngroups}")
        check_ordered("mamba2", "dt_min", dt_min, "dt_max", dt_max)
        check_ordered("mamba2", "a_init_min", a_init_min, "a_init_max", a_init_max)
        self.d_state, self.d_conv, self.expand, self.ngroups = d_state, d_conv, expand, ngroups
        self.build_passes(lambda: Mamba2Pass(
            d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim, ngroups=ngroups, dt_min=dt_min,
            dt_max=dt_max, dt_init_floor=dt_init_floor, a_init_range=(a_init_min, a_init_max), bias=bias,
            conv_bias=conv_bias, norm_eps=norm_eps, impl=impl, chunk_size=chunk_size))

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        d_inner = self.expand * self.d_model
        return d_inner * self.d_state + (d_inner + 2 * self.ngroups * self.d_state) * (self.d_conv - 1)
