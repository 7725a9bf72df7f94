"""LARA, linear randomized attention (Zheng et al. 2022), as in CAB: non-causal self only.

Per head, C proposal distributions are centred on mu_c = segmean(Q)_c + segmean(K)_c, the means of C contiguous
segments of the queries and keys (``ops/landmarks.py``; when L is not divisible by C the first segments hold
floor(L/C) tokens and the last L mod C one more; with fewer than C tokens each token is its own proposal). Training
samples one proposal per distribution, w_c = mu_c + N(0, I); eval uses w_c = mu_c, so ``eval()`` is deterministic.
Softmax attention is then estimated by self-normalised importance sampling under each proposal, with log positive
random features l_c(x) = d^-1/2 (w_c·x − |x|²/2), and the C estimates are combined with multiple-importance weights
(``ops/lara.py``):

    pi_n = softmax_c(d^-1/2 mu_c·q_n + l_c(q_n) + logsumexp_m l_c(k_m) − l_c(mu_c))
    out_n = sum_c pi_{n,c} · sum_m softmax_m(l_c(k_m)) v_m

O(L C d) time and memory.

Why non-causal self only: the proposals are means over segments of the whole sequence, so every output depends
through them (and through the sums over all keys) on future tokens, and no prefix determines its outputs (causal
self is refused). Cross patterns are refused as in CAB: the proposals mix query and key segments position by
position, which needs the two sequences aligned and of one length, and a query's output would depend on the later
queries through their segment means (which causal cross forbids).

Masks: the segment means are taken over each row's valid tokens, masked keys are excluded from the logsumexp and
from the sums over keys, and proposals of empty segments from the importance weights, so padding is inert; a row
with no valid token outputs 0. Randomness in ``train()`` is the method (``stochastic_in_training``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.ops.landmarks import segment_means
from longseq.ops.lara import lara_attention
from longseq.ops.precision import compute_dtype


@register("lara")
class LARA(HeadsMixer):
    complexity = "O(L C d)"
    state_formula = "none: non-causal self only (no streaming)"
    test_hypers = ({"n_heads": 2, "n_proposals": 4}, {"n_heads": 1, "n_proposals": 5})
    patterns = frozenset({Pattern.NONCAUSAL_SELF})
    stochastic_in_training = True

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.NONCAUSAL_SELF,
        max_len: PositiveInt | None = None,
        n_heads: PositiveInt | None = None,
        n_proposals: PositiveInt = 16,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64 (head size 64), at least 1. n_proposals: C, the number of proposal
        distributions (segments) per head (CAB: 16)."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        self.n_proposals = n_proposals

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        q, (k, v) = self.queries(x), self.keys_values(x)
        dtype = compute_dtype(q, k)  # proposals of half-precision inputs are averaged (and perturbed) in float32
        q_bar, c_valid = segment_means(q.to(dtype), self.n_proposals, mask)
        k_bar, _ = segment_means(k.to(dtype), self.n_proposals, mask)
        mu = q_bar + k_bar
        proposals = mu + torch.randn_like(mu) if self.training else mu
        o = lara_attention(q, k, v, mu, proposals, k_valid=mask, c_valid=c_valid)
        return self.finish(o, mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, n_proposals={self.n_proposals}"
