"""DilatedTCN: a stack of residual dilated depthwise convolutions, the temporal convolutional network of Bai et al.
(2018) made depthwise (as in the TCNCA paper's reconstruction); channels mix outside it.

Block i computes ``x <- x + Dropout(GELU(DWConv_{K, dilation f^i}(x)))``, f = ``dilation_base``, so the dilations
are 1, f, f², ... and the receptive field grows geometrically with depth n = ``n_layers``:

    R = 1 + (K-1)·(f^n - 1)/(f - 1)        (f = 1: R = 1 + (K-1)·n)

- causal: each block's convolution is a ``ShortConv`` (no activation, dilation f^i); the output at t depends on
  x[t-R+1..t]. Streaming (``init_state``, ``forward_stream``, ``step``) carries one ``ShortConvState`` per block,
  the last (K-1)·f^i valid inputs of that block: R-1 inputs per channel in all.
- non-causal: centred ("same") taps at offsets (i - (K-1)/2)·f^i, so K must be odd; the output at t depends on the
  R tokens centred on t.

Channels-last, x: (B, L, D). Masks are bool (B, L), True = valid; each row computes what its valid tokens give
alone (docs/design.md §4) and outputs 0 at masked positions. A masked token is a no-op on every block's state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.modules.short_conv import ShortConv, ShortConvState
from longseq.ops.pack import pack, unpack
from longseq.state import State


@dataclasses.dataclass
class DilatedTCNState(State):
    """blocks: one ShortConvState per block; block i's window: (B, D, (K-1)·f^i)."""

    blocks: list[ShortConvState]


class CentredConv(nn.Module):
    """A depthwise convolution with taps at offsets (i - (K-1)/2)·dilation, K odd, zeros beyond both ends:
    x: (B, L, D) -> (B, L, D). Initialised as ``ShortConv`` (nn.Conv1d's default, fan_in = K)."""

    def __init__(self, d: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, d, kernel_size, groups=d, dilation=dilation, padding=(kernel_size - 1) // 2 * dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


StreamAdvance = Callable[[ShortConv, Tensor, ShortConvState, Tensor | None], tuple[Tensor, ShortConvState]]


class DilatedTCN(nn.Module):
    def __init__(self, d: int, *, kernel_size: int = 3, n_layers: int = 8, dilation_base: int = 2,
                 dropout: float = 0.0, causal: bool = True) -> None:
        """d: channels; kernel_size: K, the taps of each block; n_layers: the blocks; dilation_base: f, block i's
        dilation is f^i; dropout: on each block's branch; causal: causal taps, else centred ones (K odd)."""
        super().__init__()
        for name, value in (("d", d), ("kernel_size", kernel_size), ("n_layers", n_layers),
                            ("dilation_base", dilation_base)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DilatedTCN: {name}={value!r} must be a positive integer")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DilatedTCN: dropout={dropout!r} must be in [0, 1)")
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"DilatedTCN: kernel_size={kernel_size} must be odd when causal=False (the taps are "
                             f"centred on each token); allowed: odd kernel sizes, or causal=True")
        self.d, self.kernel_size, self.causal = d, kernel_size, causal
        self.dilations = [dilation_base**i for i in range(n_layers)]
        self.convs = nn.ModuleList(
            ShortConv(d, kernel_size, activation=None, dilation=dilation) if causal
            else CentredConv(d, kernel_size, dilation) for dilation in self.dilations)
        self.dropout = nn.Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        """R: the tokens an output depends on, 1 + (K-1)·(1 + f + ... + f^(n-1))."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, L, D), mask: bool (B, L), True = valid -> y: (B, L, D), 0 at masked positions."""
        self._check_x(x)
        if mask is None:
            return self._blocks(x, None)
        # Each row's valid tokens first: every block then sees a row without its holes, as one sequence.
        packed_valid = torch.arange(x.shape[1], device=x.device) < mask.sum(dim=1, keepdim=True)
        return unpack(self._blocks(pack(x, mask), packed_valid), mask)

    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> DilatedTCNState:
        """Empty windows, one per block (causal only). device/dtype default to the weights'."""
        self._check_causal("init_state")
        return DilatedTCNState(blocks=[conv.init_state(batch, device, dtype) for conv in self.convs])

    def forward_stream(self, x: Tensor, state: DilatedTCNState,
                       mask: Tensor | None = None) -> tuple[Tensor, DilatedTCNState]:
        """The next chunk x: (B, T, D), mask: bool (B, T) -> (y: (B, T, D), the state after it). ``state`` is not
        modified."""
        self._check_x(x)
        return self._stream(x, state, mask, ShortConv.forward_stream)

    def step(self, x_t: Tensor, state: DilatedTCNState,
             mask_t: Tensor | None = None) -> tuple[Tensor, DilatedTCNState]:
        """One token x_t: (B, D), mask_t: bool (B,) -> (y_t: (B, D), the state after it)."""
        return self._stream(x_t, state, mask_t, ShortConv.step)

    def _branch(self, y: Tensor) -> Tensor:
        return self.dropout(F.gelu(y))

    def _blocks(self, x: Tensor, packed_valid: Tensor | None) -> Tensor:
        """The parallel form over x: (B, L, D), packed when ``packed_valid`` (B, L) marks each row's valid slots."""
        for conv in self.convs:
            x = x + self._branch(conv(x))
            if packed_valid is not None:
                # The packed tail stays zero, as beyond the end of a row alone (centred taps read it).
                x = x.masked_fill(~packed_valid[..., None], 0.0)
        return x

    def _stream(self, x: Tensor, state: DilatedTCNState, mask: Tensor | None,
                advance: StreamAdvance) -> tuple[Tensor, DilatedTCNState]:
        """forward_stream (x: (B, T, D), mask (B, T)) or step (x: (B, D), mask (B,)) through every block. A masked
        token's conv output is 0, so its branch adds nothing and every block's window skips it."""
        self._check_causal("streaming")
        if not isinstance(state, DilatedTCNState) or len(state.blocks) != len(self.convs):
            raise TypeError(f"DilatedTCN: state must come from its init_state, got {type(state).__name__}")
        blocks = []
        for conv, block_state in zip(self.convs, state.blocks, strict=True):
            y, block_state = advance(conv, x, block_state, mask)
            x = x + self._branch(y)
            blocks.append(block_state)
        y = x if mask is None else x.masked_fill(~mask[..., None], 0.0)
        return y, DilatedTCNState(blocks=blocks)

    def _check_causal(self, what: str) -> None:
        if not self.causal:
            raise ValueError(f"DilatedTCN: {what} needs causal=True (centred taps read future tokens)")

    def _check_x(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"DilatedTCN: x must have shape (B, L, {self.d}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return (f"{self.d}, kernel_size={self.kernel_size}, dilations={self.dilations}, causal={self.causal}, "
                f"receptive_field={self.receptive_field}")
