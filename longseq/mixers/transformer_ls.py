"""Transformer-LS (Long-Short Transformer, Zhu et al. 2021): a local window plus compressed long-range keys.

Per head, one softmax over a short-term window of keys and long-range keys compressed by a learned softmax over
positions (math in ``longseq/ops/long_short.py``).

- ``noncausal_self``: the sequence is cut into segments of ``window`` tokens; a query sees its segment and
  window // 2 tokens on each side (the paper's segment-wise sliding window), plus ``rank`` dynamic projections of the
  whole sequence: P = softmax over positions of x W_p (per head), K̄ = Pᵀ K, V̄ = Pᵀ V.
- ``causal_self``: the sequence is cut into chunks of ``chunk_size`` tokens, each compressed to ``rank`` vectors by
  a softmax within the chunk; query t sees its causal window (the last ``window`` tokens, itself included) and the
  compressed vectors of the complete chunks before its own, so it is causal and streams. The state holds the
  window's keys and values, the compressed vectors so far (it grows as L/chunk_size·rank) and the raw keys, values
  and projection logits of the current incomplete chunk, compressed when it completes.
- DualLN: window keys/values and compressed keys/values get separate LayerNorms (over d_model): the compressed ones
  are weighted sums of many tokens and live at a different scale.
- Cross patterns are refused: the window is a neighbourhood in a sequence shared by queries and keys; a query has no
  position in the memory, so "the keys near it" means nothing (CAB ships self patterns only).

Choices: RoPE (the library's convention) rotates the queries and the window keys by their positions; the compressed
keys are met by the unrotated queries (a weighted sum of tokens has no position). The causal variant's
Transformer-XL relative biases are skipped (RoPE gives the window its positions). ``rank`` defaults to CAB's
settings: 16 projections (non-causal), 1 vector per chunk (causal); ``rank=0`` drops the long-range part.
Masks: each row's valid tokens are packed first (``ops/pack.py``), so windows, segments and chunks count valid
tokens only and a padded row computes what its valid tokens give alone.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import torch
from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import SELF_PATTERNS, InvalidHyper, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.ops.long_short import causal_long_short_attention, chunk_compress, gather_span, long_short_attention
from longseq.ops.pack import pack, unpack
from longseq.ops.rotary import rotate_queries_keys
from longseq.state import State


@dataclasses.dataclass
class LongShortState(State):
    """window: (B, P, 2D) window keys and values (DualLN'd, rotated) of the last P <= window - 1 valid tokens,
    newest last; a row that has seen fewer holds zeros on the left. partial: (B, P', 2D + H·rank) raw keys, values and
    projection logits of the current incomplete chunk, oldest first. compressed: (B, G, 2D) compressed keys and
    values (DualLN'd) of the complete chunks, rank per chunk, in order. seen: (B,) valid tokens so far; length:
    positions so far (checked against max_len). Unused slots are zero."""

    window: Tensor
    partial: Tensor
    compressed: Tensor
    seen: Tensor
    length: int = 0


@register("transformer_ls")
class TransformerLS(HeadsMixer):
    patterns = SELF_PATTERNS
    complexity = "O(L (w + r) d) non-causal; O(L (w + L r / c) d) causal (window w, rank r, chunk c)"
    state_formula = "2·d·min(w-1, L) (window) + 2·d·r·floor(L/c) (compressed chunks) + (2·d + H·r)·(L mod c) (partial)"
    test_hypers = ({"n_heads": 2, "window": 4, "rank": 2, "chunk_size": 4},
                   {"n_heads": 2, "window": 5, "rank": 1, "chunk_size": 3, "rope": False})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: Annotated[int, Field(gt=0)] | None = None,
        n_heads: Annotated[int, Field(gt=0)] | None = None,
        window: PositiveInt = 64,
        rank: Annotated[int, Field(ge=0)] | None = None,
        chunk_size: PositiveInt = 32,
        rope: bool = True,
        rope_base: Annotated[float, Field(gt=1.0)] = 10000.0,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64, at least 1. window: w (non-causal: segment length; causal: keys a query
        sees, itself included). rank: compressed vectors per head (non-causal: of the whole sequence, default 16;
        causal: per chunk, default 1). chunk_size: c (causal only). rope: rotary positions in the window."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        if rope and self.head_dim % 2:
            raise InvalidHyper(f"mixer 'transformer_ls': RoPE needs an even head size, got "
                               f"d_model/n_heads={self.head_dim}")
        self.window, self.chunk_size, self.rope, self.rope_base = window, chunk_size, rope, rope_base
        self.rank = rank if rank is not None else (1 if self.pattern.is_causal else 16)
        self.ln_window = nn.LayerNorm(d_model)
        self.ln_compressed = nn.LayerNorm(d_model)
        self.projection = nn.Linear(d_model, self.n_heads * self.rank, bias=bias) if self.rank else None

    # -- pieces -------------------------------------------------------------------------------------------------------

    def _window_tokens(self, q: Tensor, k_raw: Tensor, v_raw: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """q: (B, H, T, dh), raw keys/values (B, T, D), positions (B or 1, T) -> (rotated q, window tokens (B, T, 2D):
        the DualLN'd keys (rotated) and values)."""
        k = self.split_heads(self.ln_window(k_raw))
        if self.rope:
            q, k = rotate_queries_keys(q, k, positions, base=self.rope_base)
        return q, torch.cat((rearrange(k, "b h t d -> b t (h d)"), self.ln_window(v_raw)), dim=-1)

    def _compress(self, tokens: Tensor, valid: Tensor, chunk_size: int) -> Tensor:
        """tokens: (B, S, 2D + H·r) raw keys, values and projection logits, valid: (B, S) -> (B, N·r, 2D): each
        chunk's r compressed keys and values, DualLN'd."""
        d = self.d_model
        kv = torch.cat((self.split_heads(tokens[..., :d]), self.split_heads(tokens[..., d: 2 * d])), dim=-1)
        logits = rearrange(tokens[..., 2 * d:], "b s (h r) -> b h s r", h=self.n_heads)
        bar = rearrange(chunk_compress(logits, kv, valid, chunk_size), "b h n r (two e) -> two b (n r) (h e)", two=2)
        return torch.cat((self.ln_compressed(bar[0]), self.ln_compressed(bar[1])), dim=-1)

    def _heads_kv(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S, 2D) keys and values -> k, v: (B, H, S, dh)."""
        return self.split_heads(tokens[..., : self.d_model]), self.split_heads(tokens[..., self.d_model:])

    def _raw(self, xp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The per-token projections of packed x: (B, T, D) -> q: (B, H, T, dh), raw keys and values (B, T, D)."""
        return self.queries(xp), self.k_proj(xp), self.v_proj(xp)

    def _partial_tokens(self, xp: Tensor, k_raw: Tensor, v_raw: Tensor) -> Tensor:
        """What compression needs of each token: (B, T, 2D + H·r) raw keys, values and projection logits."""
        return torch.cat((k_raw, v_raw, self.projection(xp)), dim=-1)

    # -- parallel -------------------------------------------------------------------------------------------------

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        if self.pattern.is_causal:
            return self._causal(x, mask, self._empty_state(x.shape[0], x.device, x.dtype))[0]
        b, length, _ = x.shape
        xp = x if mask is None else pack(x, mask)
        n_valid = torch.full((b,), length, device=x.device) if mask is None else mask.sum(dim=1)
        valid = torch.arange(length, device=x.device) < n_valid[:, None]
        q, k_raw, v_raw = self._raw(xp)
        q_rot, window = self._window_tokens(q, k_raw, v_raw, torch.arange(length, device=x.device)[None])
        bar = window[:, :0]
        if self.rank:
            bar = self._compress(self._partial_tokens(xp, k_raw, v_raw), valid, max(length, 1))
        o = long_short_attention(q_rot, *self._heads_kv(window), *self._heads_kv(bar), window=self.window,
                                 k_valid=valid, q_bar=q)
        y = self.finish(o, None)
        return y if mask is None else unpack(y, mask)

    # -- causal: one routine serves forward (from an empty state), forward_stream and step ---------------------------

    def _causal(self, x: Tensor, mask: Tensor | None, state: LongShortState) -> tuple[Tensor, LongShortState]:
        b, t, _ = x.shape
        dev, c, r = x.device, self.chunk_size, self.rank
        valid = torch.ones(b, t, dtype=torch.bool, device=dev) if mask is None else mask
        n_new = valid.sum(dim=1)
        xp = x if mask is None else pack(x, mask)
        q, k_raw, v_raw = self._raw(xp)
        ahead = torch.arange(t, device=dev)
        q_rot, new_window = self._window_tokens(q, k_raw, v_raw, state.seen[:, None] + ahead)
        # Window keys: the kept ones (right-aligned) then the packed new ones; packed query i sits at key P + i.
        p = state.window.shape[1]
        window = torch.cat((state.window, new_window), dim=1)
        window_valid = torch.cat((torch.arange(p, device=dev) >= p - state.seen.clamp(max=p)[:, None],
                                  ahead < n_new[:, None]), dim=1)
        # Chunks: the current chunk's earlier tokens then the new ones, packed, start at a chunk boundary.
        done, in_chunk = state.seen // c, state.seen % c
        n_seq = in_chunk + n_new
        seq, bar, n_bar = state.partial, state.compressed, None
        if r:
            pp = state.partial.shape[1]
            seq_valid = torch.cat((torch.arange(pp, device=dev) < in_chunk[:, None], ahead < n_new[:, None]), dim=1)
            seq = pack(torch.cat((state.partial, self._partial_tokens(xp, k_raw, v_raw)), dim=1), seq_valid)
            new_bar = self._compress(seq, torch.arange(seq.shape[1], device=dev) < n_seq[:, None], c)
            g = bar.shape[1]
            bar_valid = torch.cat((torch.arange(g, device=dev) < (done * r)[:, None],
                                   torch.arange(new_bar.shape[1], device=dev) // r < (n_seq // c)[:, None]), dim=1)
            bar = pack(torch.cat((bar, new_bar), dim=1), bar_valid)  # each row's complete chunks, in order
            n_bar = (done[:, None] + (in_chunk[:, None] + ahead) // c) * r  # chunks complete before packed query i
        o = causal_long_short_attention(q_rot, *self._heads_kv(window), *self._heads_kv(bar), window=self.window,
                                        k_valid=window_valid, n_bar_visible=n_bar, q_bar=q)
        y = self.finish(o, None)
        seen = state.seen + n_new
        # One host sync for the state's new widths (each the longest row's).
        most_seen, most_partial = torch.stack((seen, n_seq % c)).amax(dim=1).tolist()
        width = min(self.window - 1, most_seen)  # a query sees itself and the w-1 tokens before it
        new_state = LongShortState(
            window=gather_span(window, p + n_new - width, width),
            partial=gather_span(seq, n_seq // c * c, most_partial) if r else state.partial,
            compressed=bar[:, : most_seen // c * r],
            seen=seen, length=state.length + t)
        return (y if mask is None else unpack(y, mask)), new_state

    # -- streaming ----------------------------------------------------------------------------------------------

    def _empty_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LongShortState:
        d = self.d_model

        def empty(width: int) -> Tensor:
            return torch.zeros(batch_size, 0, width, device=device, dtype=dtype)

        return LongShortState(window=empty(2 * d), partial=empty(2 * d + self.n_heads * self.rank),
                              compressed=empty(2 * d), seen=torch.zeros(batch_size, dtype=torch.long, device=device))

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        return self._empty_state(batch_size, self._device(), self._dtype())

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, LongShortState, x.shape[1])
        return self._causal(x, mask, state)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        d, c, r = self.d_model, self.chunk_size, self.rank
        partial = (2 * d + self.n_heads * r) * (seq_len % c) if r else 0
        return 2 * d * min(self.window - 1, seq_len) + 2 * d * r * (seq_len // c) + partial
