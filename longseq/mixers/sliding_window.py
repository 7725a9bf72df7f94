"""Sliding-window attention (SWA): softmax attention over the last ``window`` tokens, in O(L·w·d).

- The window w is the number of keys a causal query sees, itself included: keys i-w+1..i (flash-attn's
  ``window_size=(w-1, 0)``). Non-causal: keys with |i - j| <= w - 1, i.e. w keys on each side counting the query
  itself (2w - 1 in all, flash-attn's ``(w-1, w-1)``), so that the causal window is exactly its left half and
  w >= L is full attention in both patterns.
- The window counts *valid* tokens: a masked token takes no slot, so a padded row (padding at either end or in holes)
  sees at each valid token the same keys as its valid tokens alone (docs/design.md §4).
- Positions: RoPE as in ``attention``, the position of a token being the number of valid tokens before it.
- Cross patterns are refused: a positional window is meaningless when the queries and the memory are not one aligned
  sequence.
- Parallel: the blocked look-around of ``ops.attention.sliding_window_attention`` (blocks of w queries, each meeting
  one strip of 2w - 1 keys, then the exact band), never an L x L score matrix.
- Streaming: a ``WindowCache`` ring buffer of the last w keys and values (O(w·d) whatever the length). A token (step)
  is appended and attends the ring as it stands; a chunk of any length is one local-attention call over [the cached
  window, oldest first; the chunk], whose queries at the cached slots are zeros and dropped.

``LocalAttention`` is the part block-local attention (``block_local.py``) shares: the two differ only in which valid
tokens a query sees (its last w, or those of its chunk) and so in the cache policy (sliding or tumbling).
"""

from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from longseq.cache import WindowCache
from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import SELF_PATTERNS, InvalidHyper, Pattern, PositiveInt, SequenceTooLong
from longseq.mixers.registry import register
from longseq.ops.attention import sliding_window_attention, softmax_attention
from longseq.ops.rotary import rotate_queries_keys, token_positions
from longseq.state import State


@dataclasses.dataclass
class LocalAttentionState(State):
    """cache: the rotated keys and values a later token may see (its ``seen``: valid tokens so far, the next token's
    RoPE position); length: positions streamed so far, valid or not; max_len: the limit they are checked against."""

    cache: WindowCache
    length: int = 0
    max_len: int | None = None


class LocalAttention(HeadsMixer, metaclass=ABCMeta):
    """Softmax attention in which a query sees only the valid tokens near it, ``span`` of them at most. A subclass
    sets ``tumbling`` (the cache policy: sliding window, or blocks of ``span`` tokens) and implements ``_local``."""

    patterns = SELF_PATTERNS
    tumbling: ClassVar[bool] = False

    def __init__(self, d_model: int, *, pattern: Pattern | str, max_len: int | None, n_heads: int | None,
                 span: int, rope: bool, rope_base: float, bias: bool) -> None:
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        if rope and self.head_dim % 2:
            raise InvalidHyper(f"mixer '{self.name}': RoPE needs an even head size, got d_model/n_heads={self.head_dim}"
                               f"; use an n_heads that leaves one, or rope=False")
        self.span, self.use_rope, self.rope_base = span, rope, rope_base

    @abstractmethod
    def _local(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None) -> Tensor:
        """q, k: (B, H, L, dh), v: (B, H, L, dh), valid: bool (B, L) or None -> (B, H, L, dh)."""

    def _projections(self, x: Tensor, mask: Tensor | None, start: Tensor | None = None) -> tuple[Tensor, ...]:
        """x: (B, T, D) -> q, k, v: (B, H, T, dh), q and k rotated at their valid-token positions (+ ``start``)."""
        q, (k, v) = self.queries(x), self.keys_values(x)
        if self.use_rope:
            positions = token_positions(mask, x.shape[0], x.shape[1], x.device, start=start)
            q, k = rotate_queries_keys(q, k, positions, base=self.rope_base)
        return q, k, v

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        q, k, v = self._projections(x, mask)
        return self.finish(self._local(q, k, v, mask), mask)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        # A stream never holds more than max_len tokens: a shorter ring then loses nothing (a window beyond the
        # sequence is full attention) and a block never completes.
        window = self.span if max_len is None else min(self.span, max_len)
        cache = WindowCache.empty(batch_size, self.n_heads, self.head_dim, self.head_dim, window=window,
                                  tumbling=self.tumbling, device=self._device(), dtype=self._dtype())
        return LocalAttentionState(cache=cache, max_len=max_len)

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        b, t, _ = x.shape
        state = self._check_stream(state, LocalAttentionState, t)
        if state.max_len is not None and state.length + t > state.max_len:
            raise SequenceTooLong(self.name, state.length + t, state.max_len)
        cache = state.cache
        q, k, v = self._projections(x, mask, start=cache.seen)
        if t == 1:
            # One token: it enters the cache, then attends the cache's valid slots in ring order — exactly its window
            # (its own block when tumbling) — with no copy of the cache per token.
            cache.append(k, v, valid=mask)
            o = softmax_attention(q, cache.keys(), cache.values(), q_valid=mask, k_valid=cache.valid())
        else:
            # A chunk: the local attention of [cached entries oldest first, chunk], the cache's empty slots masked
            # like padding; the queries at the cached slots are zeros and their outputs dropped.
            past_k, past_v, past_valid = cache.ordered()
            n = past_k.shape[2]
            chunk_valid = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask
            o = self._local(torch.cat([torch.zeros_like(past_k), q], dim=2), torch.cat([past_k, k], dim=2),
                            torch.cat([past_v, v], dim=2), torch.cat([past_valid, chunk_valid], dim=1))[:, :, n:]
            cache.append(k, v, valid=mask)
        state.length += t
        return self.finish(o, mask), state


@register("sliding_window")
class SlidingWindowAttention(LocalAttention):
    complexity = "O(L·w·d)"
    state_formula = "2·min(L, w)·d (K and V of the last w valid tokens, a ring buffer)"
    test_hypers = ({"n_heads": 2, "window": 5}, {"n_heads": 4, "window": 12, "rope": False})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: Annotated[int, Field(gt=0)] | None = None,
        window: PositiveInt = 256,
        n_heads: Annotated[int, Field(gt=0)] | None = None,
        rope: bool = True,
        rope_base: Annotated[float, Field(gt=1.0)] = 10000.0,
        bias: bool = False,
    ) -> None:
        """window: keys a causal query sees, itself included (non-causal: on each side). n_heads: default
        d_model // 64, at least 1. rope: rotary positions over valid tokens."""
        super().__init__(d_model, pattern=pattern, max_len=max_len, n_heads=n_heads, span=window, rope=rope,
                         rope_base=rope_base, bias=bias)
        self.window = window

    def _local(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None) -> Tensor:
        return sliding_window_attention(q, k, v, window=self.window, causal=self.pattern.is_causal, valid=valid)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return 2 * self.d_model * min(seq_len, self.window)
