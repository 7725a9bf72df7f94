"""Performer (Choromanski et al. 2021): softmax attention approximated by FAVOR+ random features, in all four patterns.

The features are positive and orthogonal: phi(x) = exp(W x - |x|^2 / 2) / sqrt(m) on x = q d_h^(-1/4) and
k d_h^(-1/4), so that E[phi(q) . phi(k)] = exp(q . k / sqrt(d_h)); then normalised linear attention (``_linear``)
over those features.

Random features (``modules.FavorFeatures``): m orthogonal gaussian rows, redrawn at every forward in ``train()``
(the method: the model must not fit one draw; ``stochastic_in_training``) and fixed in ``eval()``, where the mixer
is a deterministic function. A stream uses the projection in place when it runs, without redrawing.

The causal form is a true prefix form, unlike CAB's (whose key stabilizer is a max over all positions, so early
outputs depend on later keys, and whose prefix-sum helper is broken): the prefix sums are the chunked op, queries
are stabilized per token (their own largest exponent, a factor that cancels exactly because the denominator is
clamped at eps = 1e-6 rather than shifted by it), keys not at all: a per-key factor would reweight the keys, and a
shared data-dependent one would make a key's features depend on other, later keys (docs/design.md §6, "FAVOR+
stabilizer"). So all four patterns are supported; in causal cross each query reads the memory's state alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longseq.mixers._linear import LinearAttentionMixer
from longseq.mixers.base import ALL_PATTERNS, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.modules import FavorFeatures


@register("performer")
class Performer(LinearAttentionMixer):
    patterns = ALL_PATTERNS
    denominator = "clamp"
    complexity = "O(L m d) for m random features per head (causal: + O(L C H m) within chunks of C)"
    state_formula = "H·m·(d/H + 1) (S and z per head over m features, whatever L); cross: the same, of the memory"
    test_hypers = ({"n_heads": 2, "n_features": 16, "chunk_size": 8},)
    stochastic_in_training = True

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        n_heads: PositiveInt | None = None,
        n_features: PositiveInt | None = None,
        redraw: bool = True,
        chunk_size: PositiveInt = 64,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64 (head size 64), at least 1. n_features: m random features per head, default
        d_h ln d_h (the paper's; at least d_h). redraw: draw a fresh projection at every training forward.
        chunk_size: tokens per block of the causal chunked form."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        dh = self.head_dim
        self.n_features = n_features if n_features is not None else max(dh, round(dh * math.log(dh)))
        self.chunk_size = chunk_size
        # The initial projection from torch's RNG, so that layers built one after another get different draws.
        seed = int(torch.randint(2**62, (1,), device="cpu").item())
        self.favor = FavorFeatures(dh, self.n_features, redraw_in_training=redraw, seed=seed)
        self.scale = dh ** -0.25  # q . k / sqrt(d_h), split between queries and keys

    def feature_pair(self, q: Tensor, k: Tensor, *, q_valid: Tensor | None,
                     k_valid: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.favor(q * self.scale, k * self.scale)  # one redraw per training forward, shared by q and k

    def feature_map(self, t: Tensor, *, is_query: bool) -> Tensor:
        return self.favor.features(t * self.scale, is_query=is_query)
