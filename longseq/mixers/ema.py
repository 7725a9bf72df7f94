"""MEGA's multi-dimensional damped EMA (Ma et al., ICLR 2023), the sub-layer MEGA puts before its attention.

Each channel runs h = ``ndim`` damped exponential moving averages of its own input and reads them out with
learned weights (``longseq.ops.ema``): s_t = α β x_t + (1 - α δ) s_{t-1}, EMA(x)_t = η·s_t/sqrt(h). The sub-layer
is y = SiLU(EMA(x) + ω x), as the reference's MultiHeadEMA; it mixes along time only, per channel (MEGA mixes
channels in the layers around it).

The EMA is a linear time-invariant system with real diagonal modes, so it is an ``SSMConvMixer``: parallel mode
convolves with its kernel k_l = sum_n η α β q^l/sqrt(h) (log space), streaming and decoding run the recurrence,
state D·h. Non-causal self uses a second EMA over the future in MEGA's convention — both directions include the
token itself, so lag 0 is counted twice, by design (the reference's bidirectional EMA). Initialisation as the
reference: α, δ logits ~ N(0, 0.2), β ~ N(0, 0.02) + (1, -1, 1, ...) along h, η ~ N(0, 1), ω ~ N(0, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longseq.mixers._ssm_conv import SSMConvMixer
from longseq.mixers.base import Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.ops.ema import ema_kernel, ema_recurrence


class EMAKernel(nn.Module):
    """One direction's EMA parameters, each (D, h): α, δ (logits), β, η."""

    def __init__(self, d_model: int, ndim: int) -> None:
        super().__init__()
        shape = (d_model, ndim)
        self.alpha = nn.Parameter(0.2 * torch.randn(shape))
        self.delta = nn.Parameter(0.2 * torch.randn(shape))
        signs = torch.ones(ndim)
        signs[1::2] = -1.0
        self.beta = nn.Parameter(0.02 * torch.randn(shape) + signs)
        self.eta = nn.Parameter(torch.randn(shape))

    def _params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.alpha, self.delta, self.beta, self.eta

    def kernel(self, length: int) -> Tensor:
        return ema_kernel(*self._params(), length)

    def recurrence(self) -> tuple[Tensor, Tensor, Tensor]:
        return ema_recurrence(*self._params())

    def state_modes(self) -> tuple[int, bool]:
        return self.alpha.shape[1], False


@register("ema")
class EMA(SSMConvMixer):
    complexity = "O(L log L · d) parallel, O(d h) per token"
    state_formula = "d·ndim"
    test_hypers = ({"ndim": 4}, {"ndim": 1})
    lag0_in_both = True

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        ndim: PositiveInt = 16,
    ) -> None:
        """ndim: h, the EMAs per channel (16 in MEGA's LRA and language-model configs; its module default is 2)."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.ndim = ndim
        self.build_layer(lambda: EMAKernel(d_model, ndim), output=nn.SiLU())

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * self.ndim
