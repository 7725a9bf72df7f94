"""Multi-head softmax attention in all four patterns — the baseline every efficient mixer is measured against.

Self patterns rotate queries and keys with RoPE; the position of a token is the number of valid tokens before it
in its own sequence, so left padding does not shift positions. Cross patterns attend to a memory ``context``
without positions (the two sequences are not aligned). Causal cross (CAB): query i sees the whole memory and its
output does not depend on later queries — with softmax attention each query is independent, so causal and
non-causal cross compute the same function; only the causal one streams.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from longseq.cache import FullCache
from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import InvalidHyper, Pattern, SequenceTooLong
from longseq.mixers.registry import register
from longseq.ops.attention import AttentionImpl, softmax_attention
from longseq.ops.rotary import rotate_queries_keys, token_positions
from longseq.state import State


@dataclasses.dataclass
class SelfAttentionState(State):
    """cache: keys/values so far; seen: (B,) number of valid tokens so far (the next token's RoPE position)."""

    cache: FullCache
    seen: Tensor


@dataclasses.dataclass
class CrossAttentionState(State):
    """The memory, projected once: k: (B, H, S, dh), v: (B, H, S, dh), valid: bool (B, S) or None;
    length: queries streamed so far (checked against max_len)."""

    k: Tensor
    v: Tensor
    valid: Tensor | None
    length: int = 0


@register("attention")
class Attention(HeadsMixer):
    complexity = "O(L^2 d)"
    state_formula = "2·L·d (K and V of every token); cross: 2·S·d (the projected memory)"
    test_hypers = ({"n_heads": 2, "impl": "sdpa"}, {"n_heads": 2, "impl": "math"})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: Annotated[int, Field(gt=0)] | None = None,
        n_heads: Annotated[int, Field(gt=0)] | None = None,
        impl: AttentionImpl = "sdpa",
        rope: bool = True,
        rope_base: Annotated[float, Field(gt=1.0)] = 10000.0,
        dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64 (head size 64), at least 1. impl: "sdpa" (PyTorch's fused kernel) or
        "math" (materializes the L x L score matrix). rope: rotary positions in self patterns."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        self.use_rope = rope and not self.pattern.is_cross
        if self.use_rope and self.head_dim % 2:
            raise InvalidHyper(f"mixer 'attention': RoPE needs an even head size, got d_model/n_heads={self.head_dim}")
        if impl not in typing.get_args(AttentionImpl):
            raise InvalidHyper(f"mixer 'attention': impl={impl!r} is not allowed; allowed: 'sdpa', 'math'")
        self.impl, self.rope_base, self.dropout = impl, rope_base, dropout

    # -- pieces ---------------------------------------------------------------------------------------------------

    def _rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        if not self.use_rope:
            return q, k
        return rotate_queries_keys(q, k, positions, base=self.rope_base)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, q_valid: Tensor | None,
                k_valid: Tensor | None) -> Tensor:
        o = softmax_attention(q, k, v, causal=causal, q_valid=q_valid, k_valid=k_valid, impl=self.impl,
                              dropout_p=self.dropout if self.training else 0.0)
        return self.finish(o, q_valid)

    # -- parallel ---------------------------------------------------------------------------------------------

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        q = self.queries(x)
        if self.pattern.is_cross:
            k, v = self.keys_values(context)
            return self._attend(q, k, v, causal=False, q_valid=mask, k_valid=context_mask)
        k, v = self.keys_values(x)
        q, k = self._rotate(q, k, token_positions(mask, x.shape[0], x.shape[1], x.device))
        return self._attend(q, k, v, causal=self.pattern.is_causal, q_valid=mask, k_valid=mask)

    # -- streaming ----------------------------------------------------------------------------------------------

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        if self.pattern.is_cross:
            # In the parameters' dtype, as the self pattern's cache (under autocast the projections are half).
            k, v = (t.to(self._dtype()) for t in self.keys_values(context))
            # The mask is copied: the caller may reuse its tensor once init_state returns.
            valid = None if context_mask is None else context_mask.clone()
            return CrossAttentionState(k=k, v=v, valid=valid)
        device, dtype = self._device(), self._dtype()
        cache = FullCache.empty(batch_size, self.n_heads, self.head_dim, self.head_dim, max_len=max_len,
                                device=device, dtype=dtype)
        return SelfAttentionState(cache=cache, seen=torch.zeros(batch_size, dtype=torch.long, device=device))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        q = self.queries(x)
        if isinstance(state, CrossAttentionState):
            self._check_length(state.length + x.shape[1])
            state.length += x.shape[1]
            return self._attend(q, state.k, state.v, causal=False, q_valid=mask, k_valid=state.valid), state
        if not isinstance(state, SelfAttentionState):
            raise TypeError(f"mixer 'attention': state must come from its init_state, got {type(state).__name__}")
        cache = state.cache
        limit = cache.max_len if cache.max_len is not None else self.max_len
        if limit is not None and cache.length + x.shape[1] > limit:
            raise SequenceTooLong(self.name, cache.length + x.shape[1], limit)
        k, v = self.keys_values(x)
        q, k = self._rotate(q, k, token_positions(mask, x.shape[0], x.shape[1], x.device, start=state.seen))
        cache.append(k, v, valid=mask)
        y = self._attend(q, cache.keys(), cache.values(), causal=True, q_valid=mask,
                         k_valid=None if cache.all_valid else cache.valid())
        state.seen += x.shape[1] if mask is None else mask.sum(dim=1)
        return y, state

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return 2 * self.d_model * (context_len if self.pattern.is_cross else seq_len)
