"""Transformer-VQ (Lingle 2023, "Transformer-VQ: Linear-Time Transformers via Vector Quantization").

A GAU-like layer whose keys are vector-quantised, so that attention over all the past runs in linear time:

    q = LN(W_q x)·τ^-1/2,  k = LN(W_k x)·τ^-1/2     (LN without affine, per head; τ = √d_k, so q·k carries 1/√d_k)
    v = silu(W_v x),  g = silu(W_g x),  k̂ = VQ(k),  y = W_o(attn(q, k̂, v) ∘ g)

- **VQ** (``modules/vector_quantizer.py``): nearest of ``n_codes`` codes per head, straight-through gradient,
  codebook learned by an EMA of the assigned keys (``gamma``) plus a commitment loss (``beta``) that reaches the
  trainer as an auxiliary loss (``modules/aux_loss.py``). The codebook is made of buffers: checkpointed with the model.
- **Attention** (``ops/vq_attention.py``): ``causal_self`` is the paper's blockwise form, block length ``block_len``
  (W): each query sees the quantised keys of its block and the one before individually, and every older key through
  a per-code aggregate (count, mean value) — exactly dense causal attention over the quantised keys, O(L·(2W + S)·d).
  ``noncausal_self`` and both cross patterns aggregate every key of the sequence (or of the memory) by code,
  O(L·S·d); in causal cross each query reads the memory's aggregate on its own, so it is causal and streams with a
  state of H·S·(1 + d_k + d_v/H) floats whatever the memory's length.
- **Positions**: ``rel_bias`` (causal self only, where a recent set exists) adds a learned scalar per offset
  0..2W-1 on the recent keys (``modules/relative_bias.py``) — a simplification of the paper's Transformer-XL relative
  bias on the same set. Older keys carry no position (quantisation erases token identity, as in the paper).
- **Modes**: forward, stream and step compute the same function; stream carries the op's state (``cache/vq.py``:
  aggregate + the last blocks' tokens, at most 2W - 1), step is the op's one-token update.
- **Training**: the codebook learns (EMA update, commitment loss) only in a training ``forward`` inside a model's
  aux-loss scope — never when streaming or stepping (no double update), never in ``eval()``. A bare mixer in
  ``train()`` therefore computes what it computes in ``eval()``. The gradient w.r.t. the keys is the
  straight-through estimate, not the derivative of the (piecewise-constant) function: ``exact_gradients = False``.

Defaults follow the paper where it has one (d_k = 128, d_v = 2·d_model, one head, beta 1e-4, gamma 0.99); the paper's
512 codes and block length 512 are scaled down for the small models here (64 and 64). Choices where the paper is
ambiguous: the LayerNorm of q and k is taken per head; with several heads v and g are split into heads of d_v/H.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from longseq.cache.vq import VQCache, VQMemory
from longseq.mixers.base import ALL_PATTERNS, InvalidHyper, Mixer, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.modules.relative_bias import RelativePositionBias
from longseq.modules.vector_quantizer import VectorQuantizer
from longseq.ops.precision import compute_dtype
from longseq.ops.vq_attention import (
    CodeAggregate,
    aggregate_attention,
    code_aggregate,
    empty_vq_cache,
    held,
    vq_attention,
    vq_attention_chunked,
    vq_attention_update,
)
from longseq.state import State


@register("transformer_vq")
class TransformerVQ(Mixer):
    patterns = ALL_PATTERNS
    complexity = "O(L (2W + S) d) causal self; O(L S d) non-causal and cross (block length W, S codes)"
    state_formula = ("H·S·(1 + d_k) + S·d_v (per-code counts, mean keys, mean values) + (H·d_k + d_v)·R (the R <= "
                     "2W - 1 recent tokens); cross: H·S·(1 + d_k) + S·d_v")
    test_hypers = ({"d_k": 8, "n_codes": 8, "block_len": 4},
                   {"n_heads": 2, "d_k": 4, "d_v": 8, "n_codes": 5, "block_len": 3, "rel_bias": False})
    exact_gradients = False
    # Rounding flips a key's nearest code where two codes are almost tied: measured up to 0.024 (bfloat16, L 512).
    bfloat16_tolerance = 0.05
    float16_tolerance = 0.05

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        n_heads: PositiveInt = 1,
        d_k: PositiveInt = 128,
        d_v: PositiveInt | None = None,
        n_codes: PositiveInt = 64,
        block_len: PositiveInt = 64,
        beta: Annotated[float, Field(ge=0)] = 1e-4,
        gamma: Annotated[float, Field(gt=0, lt=1)] = 0.99,
        rel_bias: bool = True,
        bias: bool = False,
    ) -> None:
        """n_heads: H; d_k: query/key size per head; d_v: value and gate width over all heads (default 2·d_model);
        n_codes: S codes per head; block_len: W, the recent set is the query's block and the one before; beta:
        commitment-loss weight; gamma: codebook EMA decay; rel_bias: learned bias per offset on the recent set
        (causal self); bias: biases in the projections."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        d_v = 2 * d_model if d_v is None else d_v
        if d_v % n_heads:
            raise InvalidHyper(f"mixer '{self.name}': d_v={d_v} is not divisible by n_heads={n_heads}")
        self.n_heads, self.d_k, self.d_v, self.n_codes, self.block_len = n_heads, d_k, d_v, n_codes, block_len
        self.q_proj = nn.Linear(d_model, n_heads * d_k, bias=bias)
        self.k_proj = nn.Linear(d_model, n_heads * d_k, bias=bias)
        self.v_proj = nn.Linear(d_model, d_v, bias=bias)
        self.g_proj = nn.Linear(d_model, d_v, bias=bias)
        self.out_proj = nn.Linear(d_v, d_model, bias=bias)
        # Codes start at the scale of the keys (unit-variance LayerNorm outputs times τ^-1/2).
        self.quantizer = VectorQuantizer(n_heads, n_codes, d_k, gamma=gamma, beta=beta, init_std=d_k ** -0.25)
        self.rel_bias = (RelativePositionBias(2 * block_len)
                         if rel_bias and self.pattern == Pattern.CAUSAL_SELF else None)

    # -- pieces ---------------------------------------------------------------------------------------------------

    def _normed(self, t: Tensor) -> Tensor:
        """(B, L, H·d_k) -> (B, H, L, d_k): LayerNorm without affine per head, times τ^-1/2 = d_k^-1/4."""
        t = rearrange(t, "b l (h d) -> b h l d", h=self.n_heads)
        return F.layer_norm(t, (self.d_k,)) * self.d_k ** -0.25

    def _keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """source: (B, S, D) -> k: (B, H, S, d_k), v: (B, H, S, d_v/H)."""
        v = rearrange(F.silu(self.v_proj(source)), "b l (h d) -> b h l d", h=self.n_heads)
        return self._normed(self.k_proj(source)), v

    def _aggregate(self, source: Tensor, valid: Tensor | None, *, learn: bool) -> CodeAggregate:
        """A whole sequence's (or memory's) quantised keys and values grouped by code."""
        k, v = self._keys_values(source)
        k_hat, z, codebook = self.quantizer(k, valid, learn=learn)
        return code_aggregate(k_hat, v, z, codebook, valid)

    def _recent_bias(self) -> Tensor | None:
        """(2W,): the bias at query-minus-key offset 0..2W-1 (the table is indexed by key minus query)."""
        if self.rel_bias is None:
            return None
        return self.rel_bias(-torch.arange(2 * self.block_len, device=self.rel_bias.weight.device))

    def _finish(self, o: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
        """o: (B, H, L, d_v/H) -> y: (B, L, D): gated, projected, 0 at masked positions."""
        o = rearrange(o, "b h l d -> b l (h d)").to(x.dtype)
        y = self.out_proj(o * F.silu(self.g_proj(x)))
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)

    # -- parallel ---------------------------------------------------------------------------------------------

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        q = self._normed(self.q_proj(x))
        if self.pattern == Pattern.CAUSAL_SELF:
            k, v = self._keys_values(x)
            k_hat, z, codebook = self.quantizer(k, mask, learn=True)
            o = vq_attention(q, k_hat, v, z, codebook, causal=True, block_len=self.block_len, valid=mask,
                             recent_bias=self._recent_bias(), scale=1.0)
        else:
            memory, memory_mask = (context, context_mask) if self.pattern.is_cross else (x, mask)
            o = aggregate_attention(q, self._aggregate(memory, memory_mask, learn=True), q_valid=mask, scale=1.0)
        return self._finish(o, x, mask)

    # -- streaming ----------------------------------------------------------------------------------------------

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        if self.pattern.is_cross:
            return VQMemory(*self._aggregate(context, context_mask, learn=False))
        empty = empty_vq_cache(batch_size, self.n_heads, self.n_codes, self.d_k, self.d_v // self.n_heads,
                               device=self._device(), dtype=compute_dtype(next(self.parameters())))
        return VQCache.from_op(empty)

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        q = self._normed(self.q_proj(x))
        if self.pattern.is_cross:
            state = self._check_stream(state, VQMemory, x.shape[1])
            state.length += x.shape[1]
            return self._finish(aggregate_attention(q, state.aggregate(), q_valid=mask, scale=1.0), x, mask), state
        state = self._check_stream(state, VQCache, x.shape[1])
        k, v = self._keys_values(x)
        k_hat, z, codebook = self.quantizer(k, mask)
        o, after = vq_attention_chunked(q, k_hat, v, z, codebook, block_len=self.block_len, valid=mask,
                                        recent_bias=self._recent_bias(), scale=1.0, initial_state=state.as_op())
        return self._finish(o, x, mask), state.store(after, x.shape[1])

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        if self.pattern.is_cross:  # one token against the memory's aggregate is already O(S·d)
            return super()._step(x_t, state, mask_t=mask_t)
        state = self._check_stream(state, VQCache, 1)
        x = x_t[:, None]
        k, v = self._keys_values(x)
        k_hat, z, codebook = self.quantizer(k, None if mask_t is None else mask_t[:, None])
        o, after = vq_attention_update(self._normed(self.q_proj(x))[:, :, 0], k_hat[:, :, 0], v[:, :, 0],
                                       z[:, :, 0], codebook, state.as_op(), block_len=self.block_len, valid=mask_t,
                                       recent_bias=self._recent_bias(), scale=1.0)
        y = self._finish(o[:, :, None], x, None if mask_t is None else mask_t[:, None])
        return y[:, 0], state.store(after, 1)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        aggregate = self.n_heads * self.n_codes * (1 + self.d_k) + self.n_codes * self.d_v
        if self.pattern.is_cross:
            return aggregate
        recent = int(held(torch.tensor(seq_len), self.block_len))
        return aggregate + recent * (self.n_heads * self.d_k + self.d_v)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, d_k={self.d_k}, d_v={self.d_v}, "
                f"n_codes={self.n_codes}, block_len={self.block_len}")
