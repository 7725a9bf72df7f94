"""TCN: a temporal convolutional network (Bai et al., 2018) as a token mixer, y = out_proj(DilatedTCN(x)).

The stack (``longseq.modules.tcn``) is depthwise, as in the TCNCA paper's reconstruction: n_layers residual blocks
``x <- x + Dropout(GELU(DWConv_{K, dilation f^i}(x)))`` with dilations 1, f, f², ... (f = ``dilation_base``),
then a Linear(d, d) mixes the channels. Its receptive field, in tokens, is

    R = 1 + (K-1)·(f^n_layers - 1)/(f - 1)        (f = 1: R = 1 + (K-1)·n_layers)

Patterns: ``causal_self`` (the output at t depends on x[t-R+1..t]) and ``noncausal_self`` (centred taps, the R
tokens around t; kernel_size must be odd). Streaming and step (causal) carry each block's window of its last
(K-1)·f^i valid inputs: d·(R-1) floats, preallocated, whatever the length so far. The causal ``forward`` is that
streaming form run over cache-sized segments (``run_segmented``): the same function, and at 64K tokens 2-3x faster
than one pass whose every elementwise step streams the whole (L, d) activation through memory. Masked tokens are
skipped, as if removed from their row; the layer has no length bound of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from longseq.mixers._passes import run_segmented
from longseq.mixers.base import SELF_PATTERNS, InvalidHyper, Mixer, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.modules.tcn import DilatedTCN, DilatedTCNState
from longseq.state import State


@dataclasses.dataclass
class TCNState(State):
    """tcn: the stack's block windows (block i: (B, D, (K-1)·f^i)); length: tokens so far."""

    tcn: DilatedTCNState
    length: int = 0


@register("tcn")
class TCN(Mixer):
    patterns = SELF_PATTERNS
    complexity = "O(L · n_layers · kernel_size · d + L d²)"
    state_formula = "d·(R-1), R = 1 + (kernel_size-1)·(f^n_layers - 1)/(f - 1) the receptive field"
    # Receptive fields 15, 13 and 9 tokens: below L/2 = 16, so no output sees the whole test sequence.
    test_hypers = ({"n_layers": 3}, {"kernel_size": 5, "n_layers": 2}, {"dilation_base": 3, "n_layers": 2})


    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        kernel_size: PositiveInt = 3,
        n_layers: PositiveInt = 8,
        dilation_base: PositiveInt = 2,
        dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    ) -> None:
        """kernel_size: K, taps per block (odd in noncausal_self); n_layers: blocks; dilation_base: f, block i's
        dilation is f^i; dropout: on each block's branch."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        if not self.pattern.is_causal and kernel_size % 2 == 0:
            raise InvalidHyper(f"mixer '{self.name}': kernel_size={kernel_size} must be odd in pattern "
                               f"'{self.pattern.value}' (the taps are centred on each token); allowed: odd kernel "
                               f"sizes, or pattern '{Pattern.CAUSAL_SELF.value}'")
        self.tcn = DilatedTCN(d_model, kernel_size=kernel_size, n_layers=n_layers, dilation_base=dilation_base,
                              dropout=dropout, causal=self.pattern.is_causal)
        self.out_proj = nn.Linear(d_model, d_model)

    @property
    def receptive_field(self) -> int:
        """R, in tokens (see the module docstring)."""
        return self.tcn.receptive_field

    def _finish(self, h: Tensor, mask: Tensor | None) -> Tensor:
        """The channel mix; its bias would make masked positions non-zero, so they are zeroed after it."""
        y = self.out_proj(h)
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        if self.pattern.is_causal:  # the streaming form in cache-sized segments: the same function, faster at long L
            h = run_segmented(lambda part, m, state: self.tcn.forward_stream(part, state, m),
                              self.tcn.init_state(x.shape[0]), x, mask)
        else:
            h = self.tcn(x, mask)
        return self._finish(h, mask)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        return TCNState(tcn=self.tcn.init_state(batch_size))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, TCNState, x.shape[1])
        h, tcn_state = self.tcn.forward_stream(x, state.tcn, mask)
        return self._finish(h, mask), TCNState(tcn=tcn_state, length=state.length + x.shape[1])

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, TCNState, 1)
        h, tcn_state = self.tcn.step(x_t, state.tcn, mask_t)
        return self._finish(h, mask_t), TCNState(tcn=tcn_state, length=state.length + 1)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * (self.receptive_field - 1)
