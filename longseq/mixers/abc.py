"""ABC: attention with bounded-memory control (Peng et al. 2021), in CAB's form, in all four patterns.

Per head, keys and values are summarised into m slots by a learned softmax over positions: with scores
alpha_k = K W_k and alpha_v = V W_v (L x m, W_k, W_v: d x m per head),

    K~ = softmax_over_positions(alpha_k)ᵀ K,   V~ = softmax_over_positions(alpha_v)ᵀ V     (m x d)
    O = softmax(d^-1/2 Q K~ᵀ) V~                                                        O(L m d)

- Non-causal self and cross: the slots summarise every valid token of x (or of the memory). In causal cross each
  query reads the memory's slots on its own, so query i's output does not depend on later queries; the stream
  carries the memory's slots (2·m·d floats).
- Causal self: at position t the slots summarise the prefix j <= t only — the true prefix softmax
  K~_t[r] = sum_{j<=t} e^{alpha_jr} k_j / sum_{j<=t} e^{alpha_jr} (CAB's causal branch weights only the current
  token, which is not this). The prefix sums are carried as a numerator (m x d), a denominator (m) and a running
  max (m) for keys and for values (``ops/prefix_softmax.py``: float32 at least, every exponent relative to its own
  running max), so the stream's state is O(m·d) per head whatever the length, and ``step`` is one update of it.

Masks: a masked token has score -inf, an exact no-op on the slots; a prefix or memory with no valid token yet has
all-zero slots and outputs 0. No positional encoding: the learned pooling is what ABC has.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import ALL_PATTERNS, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.ops.precision import compute_dtype
from longseq.ops.prefix_softmax import (
    SoftmaxPoolState,
    empty_pool_state,
    prefix_slot_attention,
    slot_attention,
    softmax_pool,
)
from longseq.state import State


@dataclasses.dataclass
class ABCSelfState(State):
    """The prefix sums of the key slots (k_*) and value slots (v_*): num (B, H, m, dh), den (B, H, m), max (B, H, m)
    (-inf before any valid token), in float32 at least; length: tokens streamed so far."""

    k_num: Tensor
    k_den: Tensor
    k_max: Tensor
    v_num: Tensor
    v_den: Tensor
    v_max: Tensor
    length: int = 0

    def pools(self) -> tuple[SoftmaxPoolState, SoftmaxPoolState]:
        return (SoftmaxPoolState(self.k_num, self.k_den, self.k_max),
                SoftmaxPoolState(self.v_num, self.v_den, self.v_max))

    def store(self, k: SoftmaxPoolState, v: SoftmaxPoolState, advanced: int) -> ABCSelfState:
        self.k_num, self.k_den, self.k_max = k
        self.v_num, self.v_den, self.v_max = v
        self.length += advanced
        return self


@dataclasses.dataclass
class ABCCrossState(State):
    """The memory's slots, computed once: slot_k, slot_v: (B, H, m, dh); length: queries streamed so far."""

    slot_k: Tensor
    slot_v: Tensor
    length: int = 0


@register("abc")
class ABC(HeadsMixer):
    complexity = "O(L m d)"
    state_formula = "2·m·(d + 2·H) (key and value slot sums, denominators, running maxima); cross: 2·m·d"
    test_hypers = ({"n_heads": 2, "n_slots": 4, "chunk_size": 8}, {"n_heads": 1, "n_slots": 3, "chunk_size": 5})
    patterns = ALL_PATTERNS

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        n_heads: PositiveInt | None = None,
        n_slots: PositiveInt = 16,
        chunk_size: PositiveInt = 64,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64 (head size 64), at least 1. n_slots: m, the memory size per head (CAB: 16).
        chunk_size: tokens per block of the causal form (cost O(L·(chunk_size·(m + d) + m·d)) per head; the
        function does not depend on it)."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        self.n_slots, self.chunk_size = n_slots, chunk_size
        self.slot_k_weight = nn.Parameter(torch.empty(self.n_heads, self.head_dim, n_slots))
        self.slot_v_weight = nn.Parameter(torch.empty(self.n_heads, self.head_dim, n_slots))
        for w in (self.slot_k_weight, self.slot_v_weight):
            for head in w.data:  # CAB's initialisation, per head
                nn.init.xavier_uniform_(head, gain=2 ** -0.5)

    # -- pieces ---------------------------------------------------------------------------------------------------

    def _scores(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v: (B, H, L, dh) -> alpha_k, alpha_v: (B, H, L, m)."""
        return (torch.einsum("bhld,hdm->bhlm", k, self.slot_k_weight),
                torch.einsum("bhld,hdm->bhlm", v, self.slot_v_weight))

    def _memory_slots(self, source: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """The slots of a whole sequence: source: (B, S, D) -> slot_k, slot_v: (B, H, m, dh)."""
        k, v = self.keys_values(source)
        alpha_k, alpha_v = self._scores(k, v)
        keep = None if valid is None else valid[:, None]
        return softmax_pool(alpha_k, k, keep), softmax_pool(alpha_v, v, keep)

    def _output(self, x: Tensor, slot_k: Tensor, slot_v: Tensor, mask: Tensor | None) -> Tensor:
        o = slot_attention(self.queries(x), slot_k, slot_v)
        return self.finish(o.to(x.dtype), mask)

    # -- parallel ---------------------------------------------------------------------------------------------

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        if self.pattern.is_cross:
            return self._output(x, *self._memory_slots(context, context_mask), mask)
        if not self.pattern.is_causal:
            return self._output(x, *self._memory_slots(x, mask), mask)
        y, _ = self._causal(x, None, mask)
        return y

    def _causal(self, x: Tensor, state: ABCSelfState | None,
                mask: Tensor | None) -> tuple[Tensor, tuple[SoftmaxPoolState, SoftmaxPoolState]]:
        """Causal self over a chunk, from the prefix sums in ``state`` (None: from the start)."""
        k, v = self.keys_values(x)
        keep = None if mask is None else mask[:, None]
        k_state, v_state = (None, None) if state is None else state.pools()
        o, k_state, v_state = prefix_slot_attention(self.queries(x), k, v, *self._scores(k, v), keep, k_state,
                                                    v_state, chunk_size=self.chunk_size)
        return self.finish(o.to(x.dtype), mask), (k_state, v_state)

    # -- streaming ----------------------------------------------------------------------------------------------

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        if self.pattern.is_cross:
            return ABCCrossState(*self._memory_slots(context, context_mask))
        empty = [empty_pool_state((batch_size, self.n_heads), self.n_slots, self.head_dim, device=self._device(),
                                  dtype=compute_dtype(next(self.parameters()))) for _ in range(2)]
        return ABCSelfState(*empty[0], *empty[1])

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        if self.pattern.is_cross:
            state = self._check_stream(state, ABCCrossState, x.shape[1])
            state.length += x.shape[1]
            return self._output(x, state.slot_k, state.slot_v, mask), state
        state = self._check_stream(state, ABCSelfState, x.shape[1])
        y, (k_state, v_state) = self._causal(x, state, mask)
        return y, state.store(k_state, v_state, x.shape[1])

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        if self.pattern.is_cross:
            return 2 * self.n_slots * self.d_model
        return 2 * self.n_slots * (self.d_model + 2 * self.n_heads)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, n_slots={self.n_slots}"
