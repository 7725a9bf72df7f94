"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs") with phi = elu + 1, in all four patterns.

softmax(q k^T) is replaced by the kernel phi(q) . phi(k) with phi(x) = elu(x) + 1, per head, so that attention
reassociates into O(L) time and, causally, a recurrence over the state S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j):

    o_i = phi(q_i) S_i / (phi(q_i) . z_i + eps),   eps = 1e-6 (the reference's)

All four patterns (``_linear``): causal self by the chunked form (streaming carries (S, z), ``step`` is the
recurrent update), non-causal self over the whole sequence, cross patterns over the memory (in causal cross every
query reads the memory's (S, z) alone, so its outputs never depend on later queries). No positions: the kernel is
permutation-invariant, as in the paper.
"""

from __future__ import annotations

from torch import Tensor

from longseq.mixers._linear import LinearAttentionMixer
from longseq.mixers.base import ALL_PATTERNS, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.ops.feature_maps import elu_plus_one


@register("linear_attention")
class LinearAttention(LinearAttentionMixer):
    patterns = ALL_PATTERNS
    complexity = "O(L d^2 / H) (causal: + O(L C d) within chunks of C)"
    state_formula = "H·dh·(dh + 1) = d·(d/H + 1) (S and z per head, whatever L); cross: the same, of the memory"
    test_hypers = ({"n_heads": 2, "chunk_size": 8}, {"n_heads": 4, "chunk_size": 5})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        n_heads: PositiveInt | None = None,
        chunk_size: PositiveInt = 64,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64 (head size 64), at least 1. chunk_size: tokens per block of the causal
        chunked form (the same function for any value; a speed trade-off)."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.build_heads(n_heads, bias=bias)
        self.n_features, self.chunk_size = self.head_dim, chunk_size

    def feature_map(self, t: Tensor, *, is_query: bool) -> Tensor:
        return elu_plus_one(t)
