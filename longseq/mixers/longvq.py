"""LongVQ (Liu et al., IJCAI 2024): MEGA's gated block with vector-quantised attention plus a local window.

The paper: "LongVQ: Long Sequence Modeling with Vector Quantization on Structured Memory" (arXiv 2404.11163).

No official code was found; this is a reconstruction from the paper's description (its abstract and reviews state
VQ'd keys with a straight-through estimator, a fixed-size codebook memory, localized positional biases, inside a
MEGA-style gated SSM-attention hybrid): MEGA's gated block (``_gated_attention``, with MEGA's EMA as its context, as
``mega``) whose attention is replaced by vector-quantised attention with a local window. With q, k = OffsetScale(Z)
of MEGA's shared Z (one head) and v = silu(W_v x̂):

    k̂ = VQ(k)                          nearest of S = ``codebook_size`` codes, straight-through gradient
    o_i = softmax over [ local:  z^-1/2 q_i·k̂_j + b(i - j)  for the keys j of i's local window,
                         global: z^-1/2 q_i·C_s + log n_s   for each code s of the keys outside it ] · [v_j; m_s]

the *global* part being the per-code aggregate (count n_s, mean value m_s) of every key outside the window: the
"fixed-length codebook" memory whose size does not depend on L. The output is gated exactly as MEGA's (r, u).

Choices (where the paper leaves room, or where we had to pick):
- **Window = blocks** of W = ``block_len`` valid tokens, as Transformer-VQ's recent set. ``causal_self``: a query in
  block b sees blocks b-1 and b individually (causal inside b: its last W to 2W - 1 keys, itself included) and
  everything older through the aggregate — the existing blockwise op (``ops.vq_attention.vq_attention_chunked``)
  with its ``recent_bias``; streaming carries its ``VQCache`` (aggregate + at most 2W - 1 recent tokens) and a
  decoded token is ``vq_attention_update``. ``noncausal_self``: blocks b-1, b, b+1 individually and the rest of the
  sequence (blocks <= b-2 and >= b+2) through the aggregate (``vq_attention_local``); aggregating "the whole
  sequence" (the method notes' wording) would count the local tokens twice, so the window's keys are taken out.
- **Local keys are quantised** (k̂, like the aggregate), not the exact k: local and global scores are then
  comparable terms of one softmax (an exact key next to its own code's aggregate would be scored on two scales),
  and the causal form stays exactly dense attention over k̂ for every W. Quantisation erases token identity; the
  paper's "localized positional bias" is what tells nearby tokens apart.
- **Bias**: MEGA's "simple" relative bias (``RelativePositionBias``, one scalar per offset) on the local pairs only;
  offsets i - j (valid-token ranks) are 0..2W-1 causal and -(2W-1)..2W-1 non-causal, so a table of P = 2W covers
  both and the layer is not bound to a max_len (``max_len`` is only the optional limit every mixer takes).
  Aggregated keys carry no position.
- **Queries are not quantised** (the paper does not say they are; Transformer-VQ does not).
- **Codebook**: ``VectorQuantizer`` exactly as ``transformer_vq`` uses it — EMA codebook (``gamma``) and commitment
  loss (``beta``: 1e-4 as Transformer-VQ; the method notes give 1e-4..0.25), learning only in a training
  ``forward`` inside an aux-loss scope (never when streaming or stepping, never in ``eval()``). Codes start
  N(0, 0.02²), the scale of OffsetScale's γ, which sets the keys' scale at initialisation. The gradient w.r.t. k is
  the straight-through estimate (``exact_gradients = False``).
- Defaults: S = 64 codes and W = 64 (the method notes suggest 64-512 codes and windows of 128-256; scaled down for
  the small models here, as ``transformer_vq``); z, h, ndim as ``mega``. No dropout; MEGA's initialisation.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from longseq.cache.vq import VQCache
from longseq.mixers._gated_attention import GatedAttentionMixer, default_z_dim
from longseq.mixers.base import Pattern, PositiveInt
from longseq.mixers.ema import EMA
from longseq.mixers.registry import register
from longseq.modules.relative_bias import RelativePositionBias
from longseq.modules.vector_quantizer import VectorQuantizer
from longseq.ops.vq_attention import (
    empty_vq_cache,
    held,
    vq_attention,
    vq_attention_chunked,
    vq_attention_local,
    vq_attention_update,
)

CODE_INIT_STD = 0.02  # OffsetScale's γ scale: the keys' scale at initialisation


class VQLocalAttention(nn.Module):
    """The block's attention hook (``_gated_attention``): one head, keys quantised, a local window of blocks with a
    relative bias, the rest through the per-code aggregate. q, k: (B, L, z), v: (B, L, h) -> (B, L, h)."""

    def __init__(self, z_dim: int, h_dim: int, *, codebook_size: int, block_len: int, causal: bool, beta: float,
                 gamma: float) -> None:
        super().__init__()
        self.z_dim, self.h_dim, self.codebook_size, self.block_len, self.causal = (z_dim, h_dim, codebook_size,
                                                                                  block_len, causal)
        self.quantizer = VectorQuantizer(1, codebook_size, z_dim, gamma=gamma, beta=beta, init_std=CODE_INIT_STD)
        self.bias = RelativePositionBias(2 * block_len)

    def _bias(self) -> Tensor:
        """The ops' layout of the table (indexed by key minus query): causal (2W,) at query-minus-key offsets
        0..2W-1; non-causal (4W-1,) at offset + 2W - 1 for offsets -(2W-1)..2W-1."""
        w = self.block_len
        offsets = torch.arange(2 * w if self.causal else 4 * w - 1, device=self.bias.weight.device)
        return self.bias(-offsets if self.causal else 2 * w - 1 - offsets)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q, k: (B, L, z), v: (B, L, h), mask: bool (B, L) or None -> (B, L, h), 0 at masked positions."""
        k_hat, z, codebook = self.quantizer(k[:, None], mask, learn=True)
        if self.causal:
            o = vq_attention(q[:, None], k_hat, v[:, None], z, codebook, causal=True, block_len=self.block_len,
                             valid=mask, recent_bias=self._bias())
        else:
            o = vq_attention_local(q[:, None], k_hat, v[:, None], z, codebook, block_len=self.block_len, valid=mask,
                                   local_bias=self._bias())
        return o[:, 0].to(v.dtype)

    def init_state(self, batch: int, max_len: int | None, *, device: torch.device, dtype: torch.dtype) -> VQCache:
        """The op's empty state (aggregate and recent tokens), in float32 at least as the op computes."""
        return VQCache.from_op(empty_vq_cache(batch, 1, self.codebook_size, self.z_dim, self.h_dim, device=device,
                                              dtype=torch.promote_types(dtype, torch.float32)))

    def forward_stream(self, q: Tensor, k: Tensor, v: Tensor, state: VQCache,
                       mask: Tensor | None) -> tuple[Tensor, VQCache]:
        """The next chunk (one token: the op's O((2W + S)·d) update) -> (o: (B, T, h), state updated in place)."""
        t = q.shape[1]
        k_hat, z, codebook = self.quantizer(k[:, None], mask)
        if t == 1:
            o, after = vq_attention_update(q[:, None, 0], k_hat[:, :, 0], v[:, None, 0], z[:, :, 0], codebook,
                                           state.as_op(), block_len=self.block_len,
                                           valid=None if mask is None else mask[:, 0], recent_bias=self._bias())
            o = o[:, :, None]
        else:
            o, after = vq_attention_chunked(q[:, None], k_hat, v[:, None], z, codebook, block_len=self.block_len,
                                            valid=mask, recent_bias=self._bias(), initial_state=state.as_op())
        return o[:, 0].to(v.dtype), state.store(after, t)

    def state_size(self, seq_len: int) -> int:
        """Per code its count, mean key and mean value, plus the held recent tokens' keys and values."""
        recent = int(held(torch.tensor(seq_len), self.block_len))
        return self.codebook_size * (1 + self.z_dim + self.h_dim) + recent * (self.z_dim + self.h_dim)

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, block_len={self.block_len}, causal={self.causal}"


@register("longvq")
class LongVQ(GatedAttentionMixer):
    complexity = ("O(L (2W + S)(z+h) + L log L · d) causal, O(L (3W + S)(z+h) + L log L · d) non-causal "
                  "(block length W, S codes)")
    state_formula = ("d·ndim (EMA) + S·(1 + z + h) (per-code counts, mean keys, mean values) + (z+h)·R (the "
                     "R <= 2W - 1 recent tokens)")
    # Windows of 2W - 1 = 7 and 5 tokens causal, 3W = 12 and 9 non-causal: below L/2 in the suite (L 32).
    test_hypers = ({"z_dim": 4, "h_dim": 8, "ndim": 2, "codebook_size": 8, "block_len": 4},
                   {"z_dim": 4, "h_dim": 8, "ndim": 2, "codebook_size": 5, "block_len": 3})
    exact_gradients = False

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        z_dim: PositiveInt | None = None,
        h_dim: PositiveInt | None = None,
        ndim: PositiveInt = 16,
        codebook_size: PositiveInt = 64,
        block_len: PositiveInt = 64,
        beta: Annotated[float, Field(ge=0)] = 1e-4,
        gamma: Annotated[float, Field(gt=0, lt=1)] = 0.99,
    ) -> None:
        """z_dim: shared q/k size (default d_model/2 capped at 64, even); h_dim: value size (default 2·d_model);
        ndim: EMAs per channel; codebook_size: S codes; block_len: W, the local window is the query's block and its
        neighbour(s); beta: commitment-loss weight; gamma: codebook EMA decay."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.ndim = ndim
        z_dim = default_z_dim(d_model) if z_dim is None else z_dim
        h_dim = 2 * d_model if h_dim is None else h_dim
        part = VQLocalAttention(z_dim, h_dim, codebook_size=codebook_size, block_len=block_len,
                                causal=self.pattern.is_causal, beta=beta, gamma=gamma)
        self.build_block(EMA(d_model, pattern=self.pattern, ndim=ndim), part, z_dim=z_dim, h_dim=h_dim,
                         activate_context=False)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * self.ndim + self.attention.state_size(seq_len)
