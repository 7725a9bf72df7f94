"""Mixers made of causal passes (Mamba, Mamba-2): one pass in ``causal_self``, two in ``noncausal_self``.

A *pass* is an nn.Module in the style of s4's SequenceModule: ``pass_(x, mask, state) -> (y, state)`` over a chunk,
``pass_.step(x_t, state, mask_t) -> (y_t, state)`` over one token and ``pass_.init_state(batch)``, with a masked
position an exact no-op on its state. ``PassMixer`` turns it into a Mixer: streaming and decoding are the pass
itself; ``forward`` is the pass from a fresh state; the non-causal form adds a second pass with its own
parameters over the reversed sequence (``longseq.modules.bidirectional``). Cross patterns have no query/memory
split in these models and are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn

from longseq.mixers.base import SELF_PATTERNS, Mixer
from longseq.modules import ShortConvState
from longseq.modules.bidirectional import two_way
from longseq.state import State

SEGMENT_TOKENS = 8192  # forward() runs a causal form over at most this many tokens at a time
S = TypeVar("S", bound=State)


@dataclasses.dataclass
class ConvScanState(State):
    """conv: the short convolution's window; ssm: the scan's state (float32 at least); length: tokens so far."""

    conv: ShortConvState
    ssm: Tensor
    length: int = 0


class Pass(Protocol):
    def __call__(self, x: Tensor, mask: Tensor | None, state: ConvScanState) -> tuple[Tensor, ConvScanState]: ...

    def step(self, x_t: Tensor, state: ConvScanState, mask_t: Tensor | None) -> tuple[Tensor, ConvScanState]: ...

    def init_state(self, batch: int) -> ConvScanState: ...


def scan_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrent states and decays stay in float32 at least (bf16 would lose a decayed state in tens of steps)."""
    return torch.promote_types(dtype, torch.float32)


def run_segmented(advance: Callable[[Tensor, Tensor | None, S], tuple[Tensor, S]], state: S, x: Tensor,
                  mask: Tensor | None) -> Tensor:
    """A causal form over the whole sequence x: (B, L, D), as its streaming form in segments of ``SEGMENT_TOKENS``
    carrying the state from ``state`` (exact: streaming is the same function); advance(x_part, mask_part, state)
    -> (y_part, state). Elementwise passes over (L, ~4d) intermediates are memory-bound once they outgrow the
    cache (a GELU over 64K x 256 floats costs 48x one over 8K, not 8x); segments keep them cache-sized."""
    ys = []
    for start in range(0, x.shape[1], SEGMENT_TOKENS):
        part = slice(start, start + SEGMENT_TOKENS)
        y, state = advance(x[:, part], None if mask is None else mask[:, part], state)
        ys.append(y)
    return ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)


class PassMixer(Mixer):
    """Base of the pass mixers; a subclass calls ``super().__init__`` and then ``self.build_passes(make_pass)``."""

    patterns = SELF_PATTERNS

    def build_passes(self, make_pass: Callable[[], nn.Module]) -> None:
        self.passes = nn.ModuleList(make_pass() for _ in range(1 if self.pattern.is_causal else 2))

    def _run(self, i: int, x: Tensor, mask: Tensor | None) -> Tensor:
        """Pass i over the whole sequence, in segments (``run_segmented``)."""
        pass_: Pass = self.passes[i]
        return run_segmented(pass_, pass_.init_state(x.shape[0]), x, mask)

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        if self.pattern.is_causal:
            return self._run(0, x, mask)
        return two_way(lambda a, m: self._run(0, a, m), lambda a, m: self._run(1, a, m), x, mask)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        return self.passes[0].init_state(batch_size)

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        length = self._check_stream(state, ConvScanState, x.shape[1]).length + x.shape[1]
        y, new = self.passes[0](x, mask, state)
        new.length = length
        return y, new

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        length = self._check_stream(state, ConvScanState, 1).length + 1
        y, new = self.passes[0].step(x_t, state, mask_t)
        new.length = length
        return y, new
