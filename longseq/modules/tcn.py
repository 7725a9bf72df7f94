"""DilatedTCN: a stack of residual dilated depthwise convolutions, the temporal convolutional network of Bai et al.
(2018) made depthwise (as in the TCNCA paper's reconstruction); channels mix outside it.

Block i computes ``x <- x + Dropout(GELU(DWConv_{K, dilation f^i}(x)))``, f = ``dilation_base``, so the dilations
are 1, f, f², ... and the receptive field grows geometrically with depth n = ``n_layers``:

    R = 1 + (K-1)·(f^n - 1)/(f - 1)        (f = 1: R = 1 + (K-1)·n)

- causal: each block is ``causal_conv1d`` with dilation f^i; the output at t depends on x[t-R+1..t]. Streaming
  (``init_state``, ``forward_stream``, ``step``) carries each block's window, its last (K-1)·f^i valid inputs: R-1
  inputs per channel in all.
- non-causal: centred ("same") taps at offsets (i - (K-1)/2)·f^i, so K must be odd; the output at t depends on the
  R tokens centred on t.

Channels-last at the boundary, x: (B, L, D); inside, the whole stack runs channels-first (one transpose in, one
out), the convolutions' layout, so that no residual add or GELU walks a transposed view. Masks are bool (B, L),
True = valid; each row computes what its valid tokens give alone (docs/design.md §4) and outputs 0 at masked
positions. A masked token is a no-op on every block's window.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.ops.pack import pack, unpack
from longseq.ops.short_conv import causal_conv1d, causal_conv1d_update, state_width
from longseq.state import State


def _channels_first(x: Tensor) -> Tensor:
    """(B, L, D) -> a contiguous (B, D, L): elementwise ops keep their first operand's layout, so a transposed view
    here would make every residual add and the convolutions' window concatenation walk strided memory."""
    return x.transpose(1, 2).contiguous()


@dataclasses.dataclass
class DilatedTCNState(State):
    """windows: block i's last (K-1)·f^i valid inputs, (B, D, (K-1)·f^i)."""

    windows: list[Tensor]


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
        # nn.Conv1d holds each block's depthwise weight (D, 1, K) and bias, with its default initialisation
        # (uniform in +-1/sqrt(K)); centred blocks call it (its padding centres the taps), causal ones call
        # causal_conv1d with its weights.
        self.convs = nn.ModuleList(
            nn.Conv1d(d, d, kernel_size, groups=d, dilation=dilation,
                      padding=0 if causal else (kernel_size - 1) // 2 * dilation)
            for dilation in self.dilations)
        self.dropout = nn.Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        """R: the tokens an output depends on, 1 + (K-1)·(1 + f + ... + f^(n-1))."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, L, D), mask: bool (B, L), True = valid -> y: (B, L, D), 0 at masked positions."""
        self._check_x(x)
        if self.causal:
            h = _channels_first(x)
            for conv, dilation in zip(self.convs, self.dilations, strict=True):
                h = h + self._branch(causal_conv1d(h, conv.weight[:, 0], conv.bias, dilation=dilation, mask=mask))
            return self._masked(h.transpose(1, 2), mask)
        # Each row's valid tokens first: every centred block then sees a row without its holes, as one sequence,
        # and its packed tail stays zero, as beyond the end of a row alone.
        h = _channels_first(x if mask is None else pack(x, mask))
        valid = None if mask is None else (torch.arange(x.shape[1], device=x.device) < mask.sum(1, keepdim=True))
        for conv in self.convs:
            h = h + self._branch(conv(h))
            if valid is not None:
                h = h.masked_fill(~valid[:, None, :], 0.0)
        h = h.transpose(1, 2)
        return h if mask is None else unpack(h, mask)

    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> DilatedTCNState:
        """Empty windows, one per block (causal only). device/dtype default to the weights'."""
        self._check_causal("init_state")
        weight = self.convs[0].weight
        kw = dict(device=weight.device if device is None else device, dtype=weight.dtype if dtype is None else dtype)
        return DilatedTCNState(windows=[torch.zeros(batch, self.d, state_width(self.kernel_size, dilation), **kw)
                                        for dilation in self.dilations])

    def forward_stream(self, x: Tensor, state: DilatedTCNState,
                       mask: Tensor | None = None) -> tuple[Tensor, DilatedTCNState]:
        """The next chunk x: (B, T, D), mask: bool (B, T) -> (y: (B, T, D), the state after it). ``state`` is not
        modified."""
        self._check_x(x)
        windows = self._windows(state)
        h, new = _channels_first(x), []
        for conv, dilation, window in zip(self.convs, self.dilations, windows, strict=True):
            y, window = causal_conv1d(h, conv.weight[:, 0], conv.bias, initial_state=window, dilation=dilation,
                                      return_final_state=True, mask=mask)
            h = h + self._branch(y)  # a masked token's conv output is 0: its branch adds nothing
            new.append(window)
        return self._masked(h.transpose(1, 2), mask), DilatedTCNState(windows=new)

    def step(self, x_t: Tensor, state: DilatedTCNState,
             mask_t: Tensor | None = None) -> tuple[Tensor, DilatedTCNState]:
        """One token x_t: (B, D), mask_t: bool (B,) -> (y_t: (B, D), the state after it)."""
        windows = self._windows(state)
        h, new = x_t, []
        for conv, dilation, window in zip(self.convs, self.dilations, windows, strict=True):
            y, window = causal_conv1d_update(h, window, conv.weight[:, 0], conv.bias, dilation=dilation,
                                             mask_t=mask_t)
            h = h + self._branch(y)
            new.append(window)
        return (h if mask_t is None else h.masked_fill(~mask_t[:, None], 0.0)), DilatedTCNState(windows=new)

    def _branch(self, y: Tensor) -> Tensor:
        return self.dropout(F.gelu(y))

    @staticmethod
    def _masked(y: Tensor, mask: Tensor | None) -> Tensor:
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)

    def _windows(self, state: DilatedTCNState) -> list[Tensor]:
        self._check_causal("streaming")
        if not isinstance(state, DilatedTCNState) or len(state.windows) != len(self.convs):
            raise TypeError(f"DilatedTCN: state must come from its init_state, got {type(state).__name__}")
        return state.windows

    def _check_causal(self, what: str) -> None:
        if not self.causal:
            raise ValueError(f"DilatedTCN: {what} needs causal=True (centred taps read future tokens)")

    def _check_x(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"DilatedTCN: x must have shape (B, L, {self.d}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return (f"{self.d}, kernel_size={self.kernel_size}, dilations={self.dilations}, causal={self.causal}, "
                f"receptive_field={self.receptive_field}")
