"""Block-local ("chunked") attention, MEGA-chunk style: softmax attention within non-overlapping chunks only.

Chunks of ``chunk`` tokens (causal inside the chunk when causal), in O(L·c·d). No information crosses a chunk
boundary: in a MEGA-type layer that is the job of the EMA, SSM or TCN beside it.

- Chunks count *valid* tokens: the k-th chunk of a row is its valid tokens k·c .. k·c + c - 1, so a padded row
  (padding at either end or in holes) gives at each valid token what its valid tokens alone give (docs/design.md §4).
  Counting positions instead would let padding shift the chunk boundaries. A length not divisible by c leaves a short
  last chunk.
- Positions: RoPE as in ``attention`` (the number of valid tokens before a token); within a chunk only relative
  positions matter.
- Cross patterns are refused: chunks cut one aligned sequence, which queries and a memory are not.
- Streaming keeps the keys and values of the current chunk only, in a tumbling ``WindowCache``: it empties when a
  chunk is complete and the next valid token arrives (MEGA's decoder resets its cache at multiples of c), so the state
  after L tokens holds ((L - 1) mod c) + 1 of them. Chunks of any length and single tokens go through
  ``LocalAttention`` (sliding_window.py), the machinery this mixer shares with sliding-window attention.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor

from longseq.mixers.base import Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.mixers.sliding_window import LocalAttention
from longseq.ops.attention import block_local_attention


@register("block_local")
class BlockLocalAttention(LocalAttention):
    complexity = "O(L·c·d)"
    state_formula = "2·(((L-1) mod c) + 1)·d (K and V of the current chunk)"
    test_hypers = ({"n_heads": 2, "chunk": 5}, {"n_heads": 4, "chunk": 8, "rope": False})
    tumbling = True

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: Annotated[int, Field(gt=0)] | None = None,
        chunk: PositiveInt = 128,
        n_heads: Annotated[int, Field(gt=0)] | None = None,
        rope: bool = True,
        rope_base: Annotated[float, Field(gt=1.0)] = 10000.0,
        bias: bool = False,
    ) -> None:
        """chunk: valid tokens per chunk. n_heads: default d_model // 64, at least 1. rope: rotary positions over
        valid tokens."""
        super().__init__(d_model, pattern=pattern, max_len=max_len, n_heads=n_heads, span=chunk, rope=rope,
                         rope_base=rope_base, bias=bias)
        self.chunk = chunk

    def _local(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None) -> Tensor:
        return block_local_attention(q, k, v, chunk=self.chunk, causal=self.pattern.is_causal, valid=valid)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        current = seq_len - self.chunk * ((seq_len - 1) // self.chunk) if seq_len else 0
        return 2 * self.d_model * current
