"""ProbSparse self-attention (Informer, Zhou et al. 2021): exact attention for the least uniform queries only.

The u = factor·ceil(ln L) queries whose sampled attention is least uniform get exact softmax attention, the others
the mean of the values (math in ``longseq/ops/probsparse.py``).

Patterns: ``noncausal_self`` only.
- ``causal_self`` is refused: the top-u selection ranks every query of the sequence against the others, so whether
  query i is active (and what it outputs) depends on the queries after it — a prefix's outputs change with the
  future, and nothing can be streamed. (Informer's causal variant, lazy queries = cumsum(V), selects the same global
  way; CAB lists it as unsupported.)
- cross patterns are refused: Informer defines ProbSparse for self-attention only (its decoder's cross-attention is
  full attention), and the causal one fails for the reason above.

Sampling: U = factor·ceil(ln n) keys per query among a row's n valid tokens. In ``eval()`` the draws come from a
generator seeded with the ``seed`` hyper, so the mixer is a deterministic function; in ``train()`` each forward
draws afresh (``stochastic_in_training``). Masks: each row's valid tokens are packed first (``ops/pack.py``) and the
samples are ranks among them, drawn per valid count (``sample_keys``): a padded row samples, scores and averages
exactly what its valid tokens alone would. Positions: RoPE on queries and keys (the library's convention, as in
``attention``), counted over valid tokens.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import InvalidHyper, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.ops.pack import pack, unpack
from longseq.ops.probsparse import n_top, probsparse_attention, sample_keys
from longseq.ops.rotary import rotate_queries_keys


@register("probsparse")
class ProbSparse(HeadsMixer):
    patterns = frozenset({Pattern.NONCAUSAL_SELF})
    complexity = "O(L log L · d): u = U = factor·ceil(ln L) active queries and sampled keys per query"
    state_formula = "none (non-causal only: no streaming state)"
    test_hypers = ({"n_heads": 2, "factor": 2}, {"n_heads": 2, "factor": 1, "rope": False})
    stochastic_in_training = True
    # Rounding flips which queries are active (top-u by a score): each flip swaps attention for mean(V) at that
    # query. Measured (relative L2, L 256-512, 3 seeds): up to 0.077 in bfloat16.
    bfloat16_tolerance = 0.2
    float16_tolerance = 0.2

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.NONCAUSAL_SELF,
        max_len: Annotated[int, Field(gt=0)] | None = None,
        n_heads: Annotated[int, Field(gt=0)] | None = None,
        factor: PositiveInt = 5,
        seed: Annotated[int, Field(ge=0)] = 0,
        rope: bool = True,
        rope_base: Annotated[float, Field(gt=1.0)] = 10000.0,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64, at least 1. factor: Informer's c (u = U = c·ceil(ln L)). seed: the
        samples' seed in eval(). rope: rotary positions on queries and keys."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        if rope and self.head_dim % 2:
            raise InvalidHyper(f"mixer 'probsparse': RoPE needs an even head size, got d_model/n_heads={self.head_dim}")
        self.factor, self.seed, self.rope, self.rope_base = factor, seed, rope, rope_base

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        b, length, _ = x.shape
        n_valid = torch.full((b,), length, device=x.device) if mask is None else mask.sum(dim=1)
        xp = x if mask is None else pack(x, mask)
        q = self.queries(xp)
        k, v = self.keys_values(xp)
        if self.rope:
            q, k = rotate_queries_keys(q, k, torch.arange(length, device=x.device)[None], base=self.rope_base)
        # Fresh draws per forward in training (torch's global RNG picks the seed); the fixed seed in eval.
        seed = int(torch.randint(2**62, ())) if self.training else self.seed
        sample, sample_valid = sample_keys(n_valid, length, self.factor, seed)
        n_active = torch.tensor([n_top(n, self.factor) for n in n_valid.tolist()], device=x.device)
        packed_valid = torch.arange(length, device=x.device) < n_valid[:, None]
        o = probsparse_attention(q, k, v, sample, sample_valid, n_active, valid=packed_valid)
        y = self.finish(o, None)
        return y if mask is None else unpack(y, mask)
