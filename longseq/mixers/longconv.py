"""Regularized long convolutions (Fu et al., 2023, "Simple Hardware-Efficient Long Convolutions"; safari LongConv).

The simplest long-convolution layer: the kernel is an explicit free parameter, one weight per lag and channel,
as long as ``max_len`` (so the layer is bound to it). What keeps this over-parameterised kernel from overfitting
are two regularizers applied every time the kernel is used (``longseq.ops.kernel_regularizers``): *smooth*
(average over ``smooth_window`` neighbouring lags; off by default, as in the LRA configs) then *squash* (soft
threshold ``squash_lambda``: small weights become exactly 0), then kernel dropout (training only). The layer
around it is the S4 block: y = GLU(Linear(GELU(k * u + D u))) (``_kernel_conv``).

Patterns: causal self, and non-causal self with a second kernel for the future lags (S4's two-sided convention;
the reference's 2L kernel is the same thing split in two). There is no recurrence: streaming and decoding keep
the input history (O(L) per token). As the reference trains it, the kernel has its own learning rate
(``kernel_lr``) and no weight decay. Initialisations: "random" (0.002·N(0, 1)) or "double_exp" (0.02·N(0, 1)
damped by exp(-(l/L)(H/2)^(i/H)) along lag l for channel i: later channels decay faster).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from longseq.mixers._kernel_conv import HistoryConvMixer
from longseq.mixers.base import InvalidHyper, Pattern, PositiveFloat, PositiveInt
from longseq.mixers.registry import register
from longseq.modules.optim import set_optim
from longseq.ops.kernel_regularizers import smooth, squash

LongConvInit = Literal["random", "double_exp"]


def initial_kernel(d_model: int, length: int, init: str) -> Tensor:
    """(H, length) initial weights."""
    if init == "random":
        return 0.002 * torch.randn(d_model, length)
    lags = torch.arange(length) / length
    rates = (d_model // 2) ** (torch.arange(d_model) / d_model)
    return 0.02 * torch.randn(d_model, length) * torch.exp(-lags * rates[:, None])


class LongConvKernel(nn.Module):
    """One direction's kernel: weight (H, max_len), regularized on use."""

    def __init__(self, d_model: int, *, max_len: int, init: str, squash_lambda: float, smooth_window: int,
                 kernel_dropout: float, kernel_lr: float) -> None:
        super().__init__()
        self.kernel_len = max_len
        self.squash_lambda, self.smooth_window, self.kernel_dropout = squash_lambda, smooth_window, kernel_dropout
        self.weight = set_optim(nn.Parameter(initial_kernel(d_model, max_len, init)), lr=kernel_lr,
                                weight_decay=0.0)

    def kernel(self, length: int) -> Tensor:
        """The regularized kernel's first ``length`` lags: (H, length). Smoothing sees the whole kernel, so a lag's
        value does not depend on ``length``."""
        k = self.weight if self.smooth_window == 1 else smooth(self.weight, self.smooth_window)
        k = F.dropout(squash(k[:, :length], self.squash_lambda), self.kernel_dropout, self.training)
        return k


@register("longconv")
class LongConv(HistoryConvMixer):
    complexity = "O(L log L · d) parallel, O(L d) per token"
    state_formula = "d·min(L, max_len-1) (the input history)"
    test_hypers = ({}, {"init": "double_exp", "smooth_window": 3, "squash_lambda": 0.0})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt = 1024,
        init: LongConvInit = "random",
        squash_lambda: Annotated[float, Field(ge=0.0)] = 0.001,
        smooth_window: PositiveInt = 1,
        kernel_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        kernel_lr: PositiveFloat = 1e-3,
    ) -> None:
        """max_len: the kernel's length (the longest sequence). squash_lambda: the soft threshold (LRA configs
        use 0.001-0.003). smooth_window: odd; 1 = no smoothing. kernel_dropout: on the kernel, in training."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        if smooth_window % 2 == 0:
            raise InvalidHyper(f"mixer 'longconv': smooth_window={smooth_window} must be odd (a centred average)")
        self.build_layer(lambda: LongConvKernel(d_model, max_len=max_len, init=init, squash_lambda=squash_lambda,
                                                smooth_window=smooth_window, kernel_dropout=kernel_dropout,
                                                kernel_lr=kernel_lr))
