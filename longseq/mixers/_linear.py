"""What the linear-attention mixers share (linear attention, Performer, cosFormer): heads, the four patterns over
``longseq.ops.linear_attention``, the (S, z) state, masks. A method supplies its feature map; this module registers
nothing.

Per head, o_i = phi(q_i) S / (phi(q_i) . z (+) eps) with S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j) over the
keys query i sees:
- causal self: the keys up to i, by the chunked op; streaming carries (S, z) through the chunked op, and ``step`` is
  the one-token update;
- non-causal self: all keys of the sequence;
- both cross patterns: all keys of the memory. Each query reads the memory's (S, z) on its own, so the causal cross
  form is the non-causal one, and its stream encodes the memory's (S, z) once in ``init_state``.

Masks: a padded key is zeroed by the op (an exact no-op on S and z, zero gradient), a padded query's output is zeroed
by ``finish``. The feature map sees the masks (``feature_pair``, ``chunk_features``, ``memory_features``) only where
it depends on positions (cosFormer); the others map token by token.
"""

from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import Pattern
from longseq.ops.linear_attention import (
    Denominator,
    linear_attention,
    linear_attention_chunked,
    linear_attention_readout,
    linear_attention_state,
    linear_attention_update,
)
from longseq.state import State


@dataclasses.dataclass
class LinearAttentionState(State):
    """kv: (B, H, m, dv) = sum of phi(k) v^T, z: (B, H, m) = sum of phi(k), in float32 at least, over the keys so far
    (causal self) or over the memory (causal cross); length: tokens streamed so far (checked against max_len)."""

    kv: Tensor
    z: Tensor
    length: int = 0


class LinearAttentionMixer(HeadsMixer, metaclass=ABCMeta):
    """Base of the linear-attention mixers. A subclass calls ``super().__init__``, ``self.build_heads(n)``, sets
    ``n_features`` (m, per head) and ``chunk_size``, and implements ``feature_map``; position-dependent maps override
    the three feature hooks, ``make_state`` and ``advance``."""

    denominator: ClassVar[Denominator] = "add"
    eps: ClassVar[float] = 1e-6
    n_features: int
    chunk_size: int

    # -- the feature map ----------------------------------------------------------------------------------------

    @abstractmethod
    def feature_map(self, t: Tensor, *, is_query: bool) -> Tensor:
        """t: (B, H, L, dh) -> phi(t): (B, H, L, m), the map of one token alone (position-dependent maps build on it
        in the feature hooks)."""

    def feature_pair(self, q: Tensor, k: Tensor, *, q_valid: Tensor | None,
                     k_valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """Parallel mode: the features of one call's queries (B, H, Lq, dh) and keys (B, H, Lk, dh)."""
        return self.feature_map(q, is_query=True), self.feature_map(k, is_query=False)

    def chunk_features(self, q: Tensor, k: Tensor | None, state: LinearAttentionState, *,
                       valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Streaming: the features of a chunk's queries and (self patterns) keys, given the state before it."""
        return self.feature_map(q, is_query=True), None if k is None else self.feature_map(k, is_query=False)

    def memory_features(self, k: Tensor, *, k_valid: Tensor | None) -> Tensor:
        """Causal cross: the memory's key features, once per stream."""
        return self.feature_map(k, is_query=False)

    def make_state(self, kv: Tensor, z: Tensor) -> LinearAttentionState:
        return LinearAttentionState(kv=kv, z=z)

    def advance(self, state: LinearAttentionState, n: int, valid: Tensor | None) -> None:
        """Count the n tokens (valid: bool (B, n) or None) a stream call consumed."""
        state.length += n

    # -- parallel -------------------------------------------------------------------------------------------------

    def _norm(self) -> dict[str, Any]:
        """How the method guards its denominator (``ops.linear_attention``)."""
        return {"eps": self.eps, "denominator": self.denominator}

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        q = self.queries(x)
        k, v = self.keys_values(context if self.pattern.is_cross else x)
        k_valid = context_mask if self.pattern.is_cross else mask
        phi_q, phi_k = self.feature_pair(q, k, q_valid=mask, k_valid=k_valid)
        if self.pattern == Pattern.CAUSAL_SELF:
            o = linear_attention_chunked(phi_q, phi_k, v, self.chunk_size, k_valid=mask, **self._norm())
        else:
            o = linear_attention(phi_q, phi_k, v, k_valid=k_valid, **self._norm())
        return self.finish(o, mask)

    # -- streaming ------------------------------------------------------------------------------------------------

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        if self.pattern.is_cross:
            k, v = self.keys_values(context)
            # New tensors (sums), so the state does not alias the caller's context or mask.
            return self.make_state(*linear_attention_state(self.memory_features(k, k_valid=context_mask), v,
                                                           k_valid=context_mask))
        dtype = torch.promote_types(self._dtype(), torch.float32)  # sums over the whole stream
        kv = torch.zeros(batch_size, self.n_heads, self.n_features, self.head_dim, device=self._device(), dtype=dtype)
        return self.make_state(kv, kv.new_zeros(batch_size, self.n_heads, self.n_features))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, LinearAttentionState, x.shape[1])
        q = self.queries(x)
        if self.pattern.is_cross:
            phi_q, _ = self.chunk_features(q, None, state, valid=mask)
            o = linear_attention_readout(phi_q, (state.kv, state.z), **self._norm())
        else:
            k, v = self.keys_values(x)
            phi_q, phi_k = self.chunk_features(q, k, state, valid=mask)
            o, (state.kv, state.z) = linear_attention_chunked(
                phi_q, phi_k, v, self.chunk_size, k_valid=mask, initial_state=(state.kv, state.z),
                return_final_state=True, **self._norm())
        self.advance(state, x.shape[1], mask)
        return self.finish(o, mask), state

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        if self.pattern.is_cross:  # a read of the memory's state: the stream form on one token
            return super()._step(x_t, state, mask_t=mask_t)
        state = self._check_stream(state, LinearAttentionState, 1)
        x = x_t[:, None]
        mask = None if mask_t is None else mask_t[:, None]
        q = self.queries(x)
        k, v = self.keys_values(x)
        phi_q, phi_k = self.chunk_features(q, k, state, valid=mask)
        o, (state.kv, state.z) = linear_attention_update((state.kv, state.z), phi_q[:, :, 0], phi_k[:, :, 0],
                                                         v[:, :, 0], k_valid=mask_t, **self._norm())
        self.advance(state, 1, mask)
        return self.finish(o[:, :, None], mask)[:, 0], state

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        """S and z per head, whatever the lengths (the memory's in causal cross)."""
        return self.n_heads * self.n_features * (self.head_dim + 1)
