"""Long-convolution layers built from a kernel per channel: y = output(K * u + D u), the S4 block's shape.

A *kernel module* owns the parameters of one direction's kernel and gives ``kernel(L) -> (H, L)``. The layer
(``KernelConvMixer``) does the rest of the parallel mode:

- ``causal_self``: ``fft_conv`` with the kernel.
- ``noncausal_self``: a second kernel module gives the backward kernel, combined in S4's convention
  (``fft_conv_bidirectional``: lag 0 once, in the forward kernel). A layer whose reference counts lag 0 in both
  directions (MEGA's EMA) sets ``lag0_in_both``; its kernels are folded into S4's convention first.
- Masks: convolution counts positions, so a masked batch is packed (each row's valid tokens first,
  ``longseq.ops.pack``), convolved and unpacked.
- ``output``: the layer after the convolution, by default the reference's GELU -> Linear(H, 2H) -> GLU.

Streaming comes in two kinds, one subclass each: ``SSMConvMixer`` (``_ssm_conv``) runs a state-space
recurrence; ``HistoryConvMixer`` (here) keeps the inputs seen so far — for kernels without a recurrence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from longseq.mixers.base import SELF_PATTERNS, Mixer
from longseq.modules.param_cache import ParamCache
from longseq.ops.fft_conv import fft_conv, fft_conv_bidirectional, fold_lag0
from longseq.ops.history_conv import conv_continue, push_history
from longseq.ops.pack import pack, unpack
from longseq.state import State


def glu_output(d_model: int) -> nn.Module:
    """The S4 block's output layer: GELU -> Linear(H, 2H) -> GLU."""
    return nn.Sequential(nn.GELU(), nn.Linear(d_model, 2 * d_model), nn.GLU(dim=-1))


class KernelConvMixer(Mixer):
    """Base of the kernel-convolution layers; a subclass calls ``super().__init__`` then ``self.build_layer``."""

    patterns = SELF_PATTERNS
    lag0_in_both: ClassVar[bool] = False


    def build_layer(self, make_kernel: Callable[[], nn.Module], *, output: nn.Module | None = None) -> None:
        """One kernel module per direction, the skip D ~ N(0, 1) and the output layer."""
        self.kernels = nn.ModuleList(make_kernel() for _ in range(1 if self.pattern.is_causal else 2))
        self.D = nn.Parameter(torch.randn(self.d_model))
        self.output = glu_output(self.d_model) if output is None else output

    def _finish(self, y: Tensor, mask: Tensor | None) -> Tensor:
        y = self.output(y)
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        u = (x if mask is None else pack(x, mask)).mT  # (B, H, L)
        kernels = [module.kernel(u.shape[-1]) for module in self.kernels]
        if self.pattern.is_causal:
            y = fft_conv(u, kernels[0], D=self.D)
        else:
            k_fwd, k_bwd = fold_lag0(*kernels) if self.lag0_in_both else kernels
            y = fft_conv_bidirectional(u, k_fwd, k_bwd, D=self.D)
        y = y.mT if mask is None else unpack(y.mT, mask)
        return self._finish(y, mask)


@dataclasses.dataclass
class HistoryState(State):
    """history: (B, H, P) the last valid inputs, newest first (``longseq.ops.history_conv``); length: tokens so
    far."""

    history: Tensor
    length: int = 0


class HistoryConvMixer(KernelConvMixer):
    """A kernel-convolution layer whose kernel has no recurrence (an explicit or implicit array, as long as
    ``max_len``): streaming keeps the last ``kernel_len - 1`` valid inputs and continues the convolution from
    them (``conv_continue``: O(L) per token). The causal kernel is computed once for ``max_len`` and reused
    outside autograd (``ParamCache``)."""

    def build_layer(self, make_kernel: Callable[[], nn.Module], *, output: nn.Module | None = None) -> None:
        super().build_layer(make_kernel, output=output)
        self._kernel_cache: ParamCache[Tensor] = ParamCache()

    @property
    def kernel_len(self) -> int:
        """The causal kernel's length: lags beyond it are zero."""
        return self.kernels[0].kernel_len

    def _stream_kernel(self) -> Tensor:
        module = self.kernels[0]
        return self._kernel_cache.get(module.parameters(), lambda: module.kernel(self.kernel_len))

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        return HistoryState(history=self.D.new_zeros(batch_size, self.d_model, 0))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, HistoryState, x.shape[1])
        u = (x if mask is None else pack(x, mask)).mT
        y = conv_continue(u, state.history, self._stream_kernel(), D=self.D)
        y = y.mT if mask is None else unpack(y.mT, mask)
        history = push_history(state.history, u, self.kernel_len - 1, None if mask is None else mask.sum(dim=1))
        return self._finish(y, mask), HistoryState(history=history, length=state.length + x.shape[1])

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * min(seq_len, self.kernel_len - 1)
