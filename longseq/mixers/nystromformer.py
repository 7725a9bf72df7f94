"""Nyströmformer (Xiong et al. 2021): softmax attention approximated through m landmarks, non-causal self only.

Per head, the landmarks q~, k~ are the means of m contiguous segments of the queries and keys (``ops/landmarks.py``:
when L is not divisible by m, CAB's and LARA's rule — the first segments hold floor(L/m) tokens, the last L mod m
hold one more), and

    out = softmax(Q K~ᵀ) · pinv(softmax(Q~ K~ᵀ)) · softmax(Q~ Kᵀ) V          O(L m d + m³)

with pinv by the paper's 6-step Newton–Schulz iteration (``ops/nystrom.py``) and the paper's scaling (q and k by
d^-1/4 each, i.e. logits by d^-1/2). A sequence of at most m tokens falls back to exact softmax attention (as the
paper's code and CAB do): the approximation is then no cheaper, and with L = m it would only re-derive the exact
matrix through an iterative inverse.

Why non-causal self only: every landmark is a mean over a whole segment, so the first segment's landmark already
contains tokens far in the future of the first query, and every output mixes every key through B = softmax(Q~ Kᵀ):
no prefix of the sequence determines its outputs (causal self is refused). In cross patterns the query landmarks
would mix the queries with each other — a query's output would depend on the later queries, which causal cross
forbids — and the method (and CAB's code) defines none (cross patterns are refused).

Masks: each row's landmarks are segment means over its valid tokens only and masked keys are excluded from
softmax(Q~ Kᵀ), so padding (at either end or in holes) is inert; a row with at most m valid tokens (an empty row
included) takes the exact path on its own valid tokens. ``conv_kernel`` adds the paper code's optional skip, a
depthwise convolution of the values along the sequence (one centred kernel per head, over each row's valid tokens);
it is off by default, as in CAB, so that the mixer is the Nyström approximation alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import InvalidHyper, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.ops.attention import softmax_attention
from longseq.ops.landmarks import segment_means
from longseq.ops.nystrom import PINV_ITERATIONS, depthwise_conv_same, nystrom_attention
from longseq.ops.pack import pack
from longseq.ops.precision import compute_dtype


@register("nystromformer")
class Nystromformer(HeadsMixer):
    complexity = "O(L m d + m^3)"
    state_formula = "none: non-causal self only (no streaming)"
    test_hypers = ({"n_heads": 2, "n_landmarks": 4}, {"n_heads": 2, "n_landmarks": 5, "conv_kernel": 3})
    patterns = frozenset({Pattern.NONCAUSAL_SELF})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.NONCAUSAL_SELF,
        max_len: PositiveInt | None = None,
        n_heads: PositiveInt | None = None,
        n_landmarks: PositiveInt = 16,
        pinv_iterations: PositiveInt = PINV_ITERATIONS,
        conv_kernel: PositiveInt | None = None,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64 (head size 64), at least 1. n_landmarks: m (CAB: 16). pinv_iterations:
        Newton–Schulz steps (the paper: 6). conv_kernel: odd size of the depthwise skip convolution on the values,
        None (default) for none."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        self.n_landmarks, self.pinv_iterations = n_landmarks, pinv_iterations
        self.conv_weight = None
        if conv_kernel is not None:
            if conv_kernel % 2 == 0:
                raise InvalidHyper(f"mixer '{self.name}': conv_kernel={conv_kernel} must be odd (a kernel centred on "
                                   f"each token); allowed: odd sizes, or None for no skip convolution")
            bound = 1 / math.sqrt(conv_kernel)  # nn.Conv2d's default initialisation for this fan-in
            self.conv_weight = nn.Parameter(torch.empty(self.n_heads, conv_kernel).uniform_(-bound, bound))

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        q, (k, v) = self.queries(x), self.keys_values(x)
        counts = torch.full((x.shape[0],), x.shape[1], device=x.device) if mask is None else mask.sum(dim=1)
        few = counts <= self.n_landmarks
        # Each row takes its own path; a batch mixing both runs each on its rows and puts them back in place.
        groups = [(rows, attend) for rows, attend in ((few, self._exact), (~few, self._nystrom)) if rows.any()]
        if len(groups) == 1:
            o = groups[0][1](q, k, v, mask)
        else:
            o = v.new_zeros(v.shape)
            for rows, attend in groups:
                idx = rows.nonzero()[:, 0]
                o = o.index_copy(0, idx, attend(q[idx], k[idx], v[idx], mask[idx]))
        if self.conv_weight is not None:
            o = o + depthwise_conv_same(v, self.conv_weight, mask)
        return self.finish(o, mask)

    def _nystrom(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Rows with more than m valid tokens: q, k, v: (b, H, L, dh) -> (b, H, L, dh)."""
        dtype = compute_dtype(q, k)  # landmarks of half-precision inputs are averaged in float32
        q_land, _ = segment_means(q.to(dtype), self.n_landmarks, mask)
        k_land, _ = segment_means(k.to(dtype), self.n_landmarks, mask)
        return nystrom_attention(q, k, v, q_land, k_land, k_valid=mask, n_iter=self.pinv_iterations)

    def _exact(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Rows with at most m valid tokens: exact attention over their valid keys, packed to the front and cut
        to m, so that a long padded row costs O(L m), not O(L²)."""
        if mask is None:
            return softmax_attention(q, k, v)
        keep = min(k.shape[2], self.n_landmarks)
        k_valid = torch.arange(keep, device=k.device) < mask.sum(dim=1, keepdim=True)
        return softmax_attention(q, pack(k, mask, dim=2)[:, :, :keep], pack(v, mask, dim=2)[:, :, :keep],
                                 q_valid=mask, k_valid=k_valid)

    def extra_repr(self) -> str:
        conv = None if self.conv_weight is None else self.conv_weight.shape[1]
        return f"{super().extra_repr()}, n_heads={self.n_heads}, n_landmarks={self.n_landmarks}, conv_kernel={conv}"
