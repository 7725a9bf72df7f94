"""SGConv (Li et al., ICLR 2023, "What Makes Convolutional Models Great on Long Sequence Modeling?").

A global convolution whose kernel is built from S short sub-kernels of ``kernel_dim`` weights each, stretched to
twice the length at every scale and down-weighted by ``decay`` per scale (``longseq.ops.sgconv``): the paper's
two principles, parameters sub-linear in L and a kernel that decays with distance. The kernel is divided by its
norm at initialisation, per channel, so that it starts at unit norm whatever the number of scales; the reference
measures that norm at its first forward call and freezes it, which makes a checkpoint depend on when the model
was first run — here it is computed in ``__init__`` from the initial sub-kernels and kept as a buffer. The layer
around it is the S4 block: y = GLU(Linear(GELU(k * u + D u))) (``_kernel_conv``).

S = 1 + ceil(log2(max_len / kernel_dim)) scales cover max_len lags, so the layer is bound to ``max_len``.
Patterns: causal self, and non-causal self with a second kernel for the future lags (S4's two-sided
convention). There is no recurrence: streaming and decoding keep the input history (O(L) per token). As the
reference trains them, the sub-kernels have their own learning rate (``kernel_lr``) and no weight decay.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from longseq.mixers._kernel_conv import HistoryConvMixer
from longseq.mixers.base import Pattern, PositiveFloat, PositiveInt
from longseq.mixers.registry import register
from longseq.modules.optim import set_optim
from longseq.ops.sgconv import multiscale_kernel, n_scales


class SGConvKernel(nn.Module):
    """One direction's kernel: S sub-kernels (H, kernel_dim) and the initial norm (H,)."""

    def __init__(self, d_model: int, *, max_len: int, kernel_dim: int, decay: float, interpolation: str,
                 kernel_lr: float) -> None:
        super().__init__()
        self.kernel_len, self.decay, self.interpolation = max_len, decay, interpolation
        self.subkernels = nn.ParameterList(
            set_optim(nn.Parameter(torch.randn(d_model, kernel_dim)), lr=kernel_lr, weight_decay=0.0)
            for _ in range(n_scales(max_len, kernel_dim)))
        with torch.no_grad():
            self.register_buffer("initial_norm", self._raw(max_len).norm(dim=-1))

    def _raw(self, length: int) -> Tensor:
        return multiscale_kernel(list(self.subkernels), length, decay=self.decay, interpolation=self.interpolation)

    def kernel(self, length: int) -> Tensor:
        """The first ``length`` lags: (H, length)."""
        return self._raw(length) / self.initial_norm[:, None]


@register("sgconv")
class SGConv(HistoryConvMixer):
    complexity = "O(L log L · d) parallel, O(L d) per token"
    state_formula = "d·min(L, max_len-1) (the input history)"
    test_hypers = ({"kernel_dim": 4}, {"kernel_dim": 8, "decay": 1.5, "interpolation": "nearest"})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt = 1024,
        kernel_dim: PositiveInt = 64,
        decay: Annotated[float, Field(ge=1.0)] = 2.0,
        interpolation: Literal["linear", "nearest"] = "linear",
        kernel_lr: PositiveFloat = 1e-3,
    ) -> None:
        """max_len: the longest sequence (it sets the number of scales). kernel_dim: weights per sub-kernel
        (the reference's default 64; its README uses 32). decay: weight ratio of consecutive scales."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_layer(lambda: SGConvKernel(d_model, max_len=max_len, kernel_dim=kernel_dim, decay=decay,
                                              interpolation=interpolation, kernel_lr=kernel_lr))
