"""MEGA: moving average equipped gated attention (Ma et al., ICLR 2023), full and chunked (MEGA-chunk).

The block of ``_gated_attention`` with MEGA's context: the ``ema`` mixer (MultiHeadEMA, m = silu(EMA(x) + ω x)),
composed as a sub-module, bidirectional in ``noncausal_self`` (MEGA's convention: both directions include the
token itself); then single-head gated attention on q, k = OffsetScale(Z) of a shared Z, values silu(W_v x), the
reset gate r, the update gate u and the output H = silu(hx + W_h((A v) ⊙ r)). The mixer returns u ⊙ (H - x̂) for
the backbone's pre-norm residual (the deviation from MEGA's x + u ⊙ (H - x) is argued in ``_gated_attention``).

Choices where the paper or its code leave room:
- ``attention``: softmax(z^-1/2 q·k + bias), or MEGA's element-wise laplace / relu²(q·k / n + bias), n = the keys
  the query sees (``ops.biased_attention``).
- ``positions``: "bias" is MEGA's "simple" relative bias, one learned scalar per offset; "rotary" applies RoPE
  (``ops.rotary``) to q and k — not MEGA's "rotary" bias (a bias made of two rotated learned vectors).
- ``chunk_size``: None = attention over the whole sequence (O(L²)); c = MEGA-chunk: attention only inside chunks of
  c *valid* tokens, as ``block_local`` counts them (so padding cannot shift a chunk boundary), relative positions
  inside the chunk; across chunks only the EMA carries information. Positions everywhere count valid tokens.
- ``max_positions`` (bias only): the table's reach, by default chunk_size (chunked) or max_len (unchunked, where it
  binds the length: without max_len both default to 1024 and a longer sequence raises ``SequenceTooLong``).
- No dropout, and MEGA's initialisation (projections N(0, 0.02²), zero biases; the EMA's as in ``ema``).

Decoding keeps the EMA state (D·ndim) plus the keys and values of the current chunk (a tumbling ``WindowCache``, as
block_local) or, unchunked, of every token (``FullCache``). A masked token changes no state and outputs 0.
"""

from __future__ import annotations

from longseq.mixers._gated_attention import GatedAttentionMixer, Positions
from longseq.mixers.base import Pattern, PositiveInt
from longseq.mixers.ema import EMA
from longseq.mixers.registry import register
from longseq.ops.biased_attention import Kernel


@register("mega")
class Mega(GatedAttentionMixer):
    complexity = "O(L^2 (z+h) + L log L · d) full; O(L·c·(z+h) + L log L · d) chunked (c = chunk_size)"
    state_formula = "d·ndim (EMA) + (z+h)·L (K and V of every token); chunked: d·ndim + (z+h)·(((L-1) mod c) + 1)"
    test_hypers = (
        {"z_dim": 4, "h_dim": 8, "ndim": 2, "chunk_size": 5},
        {"z_dim": 4, "h_dim": 8, "ndim": 2, "chunk_size": 6, "attention": "laplace", "positions": "rotary"},
        {"z_dim": 4, "h_dim": 8, "ndim": 2, "attention": "relu2"},
    )

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        z_dim: PositiveInt | None = None,
        h_dim: PositiveInt | None = None,
        ndim: PositiveInt = 16,
        chunk_size: PositiveInt | None = None,
        attention: Kernel = "softmax",
        positions: Positions = "bias",
        max_positions: PositiveInt | None = None,
    ) -> None:
        """z_dim: shared q/k size (default d_model/2 capped at 64, even); h_dim: value size (default 2·d_model);
        ndim: EMAs per channel; chunk_size: None = full attention, else MEGA-chunk; attention: softmax, laplace or
        relu2; positions: relative bias or rotary q, k; max_positions: the bias table's reach (module docstring)."""
        max_len, max_positions = self.resolve_positions(chunk_size=chunk_size, positions=positions, max_len=max_len,
                                                        max_positions=max_positions)
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.ndim, self.chunk_size = ndim, chunk_size
        self.build_mega(EMA(d_model, pattern=self.pattern, ndim=ndim), activate_context=False, z_dim=z_dim,
                        h_dim=h_dim, chunk_size=chunk_size, attention=attention, positions=positions,
                        max_positions=max_positions)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * self.ndim + self.attention.state_size(seq_len)
