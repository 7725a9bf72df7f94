"""Caches of vector-quantised attention (Transformer-VQ, LongVQ): keys grouped by code, of a size independent of L.

- ``VQCache`` (causal self): the state of ``ops.vq_attention``'s causal form — per head and code the count, mean key
  and mean value of every token older than the recent set, and the recent tokens themselves (at most 2W - 1 per row,
  oldest first, with their codes). Its math (what moves from the recent set into the aggregate, and when) is the op's;
  this is its ``State`` form: batch in dim 0, reached by ``select``/``to``/``detach``.
- ``VQMemory`` (cross): a memory's keys and values aggregated by code once, in ``init_state``.

Floats per sequence: H·S·(1 + dk + dv) for the aggregate, plus H·R·(dk + dv) for the R recent tokens held.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from longseq.ops.vq_attention import CodeAggregate, VQCacheState
from longseq.state import State


@dataclasses.dataclass
class VQCache(State):
    """counts (B, H, S), keys (B, H, S, dk), values (B, H, S, dv): the aggregated cache; recent_k (B, H, R, dk),
    recent_v (B, H, R, dv), recent_z (B, H, R) int64: the recent tokens; seen (B,): valid tokens so far; length:
    positions so far (checked against max_len)."""

    counts: Tensor
    keys: Tensor
    values: Tensor
    recent_k: Tensor
    recent_v: Tensor
    recent_z: Tensor
    seen: Tensor
    length: int = 0

    @classmethod
    def from_op(cls, state: VQCacheState) -> VQCache:
        return cls(*state)

    def as_op(self) -> VQCacheState:
        return VQCacheState(self.counts, self.keys, self.values, self.recent_k, self.recent_v, self.recent_z,
                            self.seen)

    def store(self, state: VQCacheState, advanced: int) -> VQCache:
        """Take the op's state after a call that advanced ``advanced`` positions."""
        (self.counts, self.keys, self.values, self.recent_k, self.recent_v, self.recent_z, self.seen) = state
        self.length += advanced
        return self


@dataclasses.dataclass
class VQMemory(State):
    """A memory aggregated by code: counts (B, H, S), keys (B, H, S, dk), values (B, H, S, dv); length: queries
    streamed so far (checked against max_len)."""

    counts: Tensor
    keys: Tensor
    values: Tensor
    length: int = 0

    def aggregate(self) -> CodeAggregate:
        return CodeAggregate(self.counts, self.keys, self.values)
