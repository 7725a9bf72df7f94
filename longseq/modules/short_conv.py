"""ShortConv: a causal depthwise convolution over a few tokens (Mamba, Mamba-2, H3, Hyena, GLA's short convs), its
taps optionally ``dilation`` tokens apart (a dilated TCN's blocks).

Channels-last at the boundary, x: (B, L, D), like the mixers that use it; the math (and the masked-token
convention: a masked token is skipped, as if removed from its row) is ``longseq.ops.short_conv``. The three modes
compute the same function: ``forward`` on a whole sequence, ``forward_stream`` over chunks and ``step`` one token
at a time, carrying the last (W-1)·dilation valid inputs. States are new tensors (never views of the caller's
inputs) and keep their autograd history, so gradients flow through a chain of chunks.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from longseq.ops.short_conv import ACTIVATIONS, causal_conv1d, causal_conv1d_update, state_width
from longseq.state import State


@dataclasses.dataclass
class ShortConvState(State):
    """window: (B, D, (W-1)·dilation), the last (W-1)·dilation valid inputs (zeros before the first token)."""

    window: Tensor


class ShortConv(nn.Module):
    def __init__(self, d: int, kernel_size: int = 4, *, bias: bool = True, activation: str | None = "silu",
                 dilation: int = 1) -> None:
        """d: channels; kernel_size: W, the taps of each output (itself and W-1 before it, ``dilation`` tokens
        apart); activation: "silu" or None."""
        super().__init__()
        for name, value in (("d", d), ("kernel_size", kernel_size), ("dilation", dilation)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ShortConv: {name}={value!r} must be a positive integer")
        if activation not in ACTIVATIONS:
            raise ValueError(f"ShortConv: activation={activation!r} is not allowed; allowed: None, 'silu'")
        self.d, self.kernel_size, self.activation, self.dilation = d, kernel_size, activation, dilation
        self.weight = nn.Parameter(torch.empty(d, kernel_size))
        self.bias = nn.Parameter(torch.empty(d)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv1d's default for a depthwise conv: uniform in +-1/sqrt(fan_in), fan_in = kernel_size."""
        bound = 1 / math.sqrt(self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, L, D), mask: bool (B, L), True = valid -> y: (B, L, D), 0 at masked positions."""
        y = causal_conv1d(self._channels_first(x), self.weight, self.bias, activation=self.activation, mask=mask,
                          dilation=self.dilation)
        return y.transpose(1, 2)

    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ShortConvState:
        """Zeros: before the first token the window is empty. device/dtype default to the weight's."""
        device = self.weight.device if device is None else device
        dtype = self.weight.dtype if dtype is None else dtype
        width = state_width(self.kernel_size, self.dilation)
        return ShortConvState(window=torch.zeros(batch, self.d, width, device=device, dtype=dtype))

    def forward_stream(self, x: Tensor, state: ShortConvState,
                       mask: Tensor | None = None) -> tuple[Tensor, ShortConvState]:
        """The next chunk x: (B, T, D), mask: bool (B, T) -> (y: (B, T, D), the state after it). ``state`` is not
        modified."""
        y, window = causal_conv1d(self._channels_first(x), self.weight, self.bias, initial_state=self._window(state),
                                  activation=self.activation, return_final_state=True, mask=mask,
                                  dilation=self.dilation)
        return y.transpose(1, 2), ShortConvState(window=window)

    def step(self, x_t: Tensor, state: ShortConvState, mask_t: Tensor | None = None) -> tuple[Tensor, ShortConvState]:
        """One token x_t: (B, D), mask_t: bool (B,) -> (y_t: (B, D), the state after it). ``state`` is not modified."""
        y, window = causal_conv1d_update(x_t, self._window(state), self.weight, self.bias,
                                         activation=self.activation, mask_t=mask_t, dilation=self.dilation)
        return y, ShortConvState(window=window)

    def _channels_first(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"ShortConv: x must have shape (B, L, {self.d}), got {tuple(x.shape)}")
        return x.transpose(1, 2)

    @staticmethod
    def _window(state: ShortConvState) -> Tensor:
        if not isinstance(state, ShortConvState):
            raise TypeError(f"ShortConv: state must come from its init_state, got {type(state).__name__}")
        return state.window

    def extra_repr(self) -> str:
        return (f"{self.d}, kernel_size={self.kernel_size}, bias={self.bias is not None}, "
                f"activation={self.activation!r}, dilation={self.dilation}")
