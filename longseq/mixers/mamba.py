"""Mamba (Gu & Dao, 2023): the selective state-space block, exact and fast on CPU.

One pass, per token t and inner channel d (the reference's mamba_simple.Mamba):

    x, z  = in_proj(u)                         x, z: (B, L, E), E = expand · d_model
    x     = silu(short_conv(x))                causal depthwise, width d_conv
    dt, B, C = x_proj(x)                       dt: rank R, B, C: (B, L, N), shared by all channels
    delta = softplus(dt_proj(dt))              (B, L, E) > 0, dt_proj's bias set so delta starts log-uniform
    h_t   = exp(delta_t A) h_{t-1} + delta_t B_t x_t        A = -exp(A_log): (E, N), S4D-Real init
    y     = out_proj((<C_t, h_t> + D x_t) · silu(z_t))

The scan is ``longseq.ops.selective_scan`` (the compiled CPU kernel when available, else the two-level chunked
scan in plain PyTorch) or its loop oracle (``impl="ref"``); decoding uses ``mamba_block_step`` (the whole block,
projections included, in one compiled call per token when available). A padded token gets delta = 0 (no decay, no
input) and is skipped by the short convolution: an exact no-op on both states. ``A_log`` and ``D`` carry no weight
decay, as the reference trains them. The non-causal form adds a second pass over the reversed sequence
(``_passes``); cross patterns are refused. Differences from the reference: no fused kernels beyond the scan and the
token step, and no model-level re-initialisation of out_proj (longseq's models re-initialise only the token
embedding, so dt_proj's bias keeps its init).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.mixers._passes import ConvScanState, PassMixer, scan_dtype
from longseq.mixers.base import Pattern, PositiveFloat, PositiveInt, check_ordered
from longseq.mixers.registry import register
from longseq.modules import ShortConv, ShortConvState
from longseq.modules.optim import set_optim
from longseq.modules.param_cache import ParamCache
from longseq.modules.ssm_init import dt_bias
from longseq.ops.mamba_step import MambaStepWeights, mamba_block_step
from longseq.ops.selective_scan import selective_scan, selective_scan_ref


class MambaPass(nn.Module):
    """One causal pass of the block: ``forward(x, mask, state) -> (y, state)`` over a chunk, ``step`` one token."""

    def __init__(self, d_model: int, *, d_state: int, d_conv: int, expand: int, dt_rank: int, dt_min: float,
                 dt_max: float, dt_init_floor: float, bias: bool, conv_bias: bool, impl: str, chunk_size: int) -> None:
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank = expand * d_model, d_state, dt_rank
        self.scan = selective_scan_ref if impl == "ref" else functools.partial(selective_scan, chunk_size=chunk_size)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv = ShortConv(self.d_inner, d_conv, bias=conv_bias, activation="silu")
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -dt_rank**-0.5, dt_rank**-0.5)
            self.dt_proj.bias.copy_(dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor))
        a = torch.arange(1, d_state + 1, dtype=torch.float32).log().expand(self.d_inner, d_state)
        self.A_log = set_optim(nn.Parameter(a.clone()), weight_decay=0.0)
        self.D = set_optim(nn.Parameter(torch.ones(self.d_inner)), weight_decay=0.0)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._A_cache: ParamCache[Tensor] = ParamCache()

    def _A(self) -> Tensor:
        """A = -exp(A_log): (E, N); outside autograd computed once while A_log is unchanged (decoding would
        otherwise pay two tensor operations per token for it)."""
        return self._A_cache.get([self.A_log], lambda: -self.A_log.exp())

    def _step_weights(self) -> MambaStepWeights:
        """The parameters for ``mamba_block_step``, read from the modules' parameter dicts: attribute access on an
        nn.Module costs ~0.5 us, and 22 of them were a sixth of a decode step."""
        in_p, conv_p, x_p, dt_p, out_p = (self._modules[name]._parameters
                                          for name in ("in_proj", "conv", "x_proj", "dt_proj", "out_proj"))
        return MambaStepWeights(in_p["weight"], in_p.get("bias"), conv_p["weight"], conv_p.get("bias"), x_p["weight"],
                                dt_p["weight"], dt_p["bias"], self._A(), self._parameters["D"], out_p["weight"],
                                out_p.get("bias"))

    def init_state(self, batch: int) -> ConvScanState:
        dtype = self.D.dtype
        ssm = torch.zeros(batch, self.d_inner, self.d_state, device=self.D.device, dtype=scan_dtype(dtype))
        return ConvScanState(conv=self.conv.init_state(batch), ssm=ssm)

    def _delta_b_c(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """x: (..., E) after the conv -> delta: (..., E), zero where masked; B, C: (..., N)."""
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        return (delta if mask is None else delta * mask[..., None]), b, c

    def forward(self, x: Tensor, mask: Tensor | None, state: ConvScanState) -> tuple[Tensor, ConvScanState]:
        """x: (B, T, d_model), mask: bool (B, T) -> y: (B, T, d_model), 0 where masked; the state after x."""
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        xc, conv = self.conv.forward_stream(xi, state.conv, mask)
        delta, b, c = self._delta_b_c(xc, mask)
        y, ssm = self.scan(xc.mT, delta.mT, self._A(), b.mT, c.mT, D=self.D, z=z.mT, initial_state=state.ssm,
                      return_last_state=True)
        y = self.out_proj(y.mT)
        return (y if mask is None else y.masked_fill(~mask[..., None], 0.0)), ConvScanState(conv=conv, ssm=ssm)

    def step(self, x_t: Tensor, state: ConvScanState, mask_t: Tensor | None) -> tuple[Tensor, ConvScanState]:
        """x_t: (B, d_model), mask_t: bool (B,) -> y_t: (B, d_model); the state after it. The whole block is one op
        (``mamba_block_step``: one compiled call when kernels are available)."""
        y, window, ssm = mamba_block_step(x_t, state.conv.window, state.ssm, self._step_weights(), mask_t)
        return y, ConvScanState(conv=ShortConvState(window=window), ssm=ssm)


@register("mamba")
class Mamba(PassMixer):
    complexity = "O(L d N)"
    state_formula = "expand·d·(d_state + d_conv − 1) (SSM state and conv window)"
    test_hypers = ({"d_state": 4, "chunk_size": 8}, {"d_state": 4, "impl": "ref"})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        d_state: PositiveInt = 16,
        d_conv: PositiveInt = 4,
        expand: PositiveInt = 2,
        dt_rank: PositiveInt | None = None,
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 0.1,
        dt_init_floor: PositiveFloat = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        impl: Literal["chunked", "ref"] = "chunked",
        chunk_size: PositiveInt = 64,
    ) -> None:
        """dt_rank: default ceil(d_model / 16). impl: "chunked" (the fast scan, chunks of ``chunk_size``) or "ref"
        (the loop over time). Non-causal: two passes, the second over the reversed sequence."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        check_ordered("mamba", "dt_min", dt_min, "dt_max", dt_max)
        self.d_state, self.d_conv, self.expand = d_state, d_conv, expand
        rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.build_passes(lambda: MambaPass(
            d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=rank, dt_min=dt_min, dt_max=dt_max,
            dt_init_floor=dt_init_floor, bias=bias, conv_bias=conv_bias, impl=impl, chunk_size=chunk_size))

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.expand * self.d_model * (self.d_state + self.d_conv - 1)
