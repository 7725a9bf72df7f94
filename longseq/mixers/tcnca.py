"""TCNCA: temporal convolution network with chunked attention (Terzic et al., NeurIPS 2023 ENLSP workshop).

MEGA-chunk with its EMA replaced by a temporal convolutional network: the block of ``_gated_attention`` with
context m = silu(TCN(x)), TCN = ``longseq.modules.tcn.DilatedTCN``, ``n_layers`` residual blocks
x <- x + GELU(DWConv_{K, dilation f^i}(x)) (depthwise, dilations 1, f, f², ..., f = ``dilation_base``). No official
code was found; the TCN follows the paper's description (stacked dilated convolutions, receptive field growing
exponentially with depth) as the repository's ``tcn`` mixer does, and the SiLU mirrors MEGA's m = silu(EMA(x) + ω x)
(the TCN's residual stream plays the part of ω x). Its receptive field, in tokens, is

    R = 1 + (K-1)·(f^n_layers - 1)/(f - 1)        (f = 1: R = 1 + (K-1)·n_layers)

so an output sees the last R tokens through the convolutions plus its chunk through the attention, nothing more:
O(L) in all. Attention as MEGA's (``mega``): softmax / laplace / relu², relative bias or rotary, always chunked
(``chunk_size`` chunks of valid tokens; default 128). Patterns: ``causal_self``, and ``noncausal_self`` with
centred taps (the R tokens around t, K odd) and two-sided chunks. Decoding keeps each TCN block's window (d·(R-1)
floats) and the keys and values of the current chunk. Projections as MEGA's (N(0, 0.02²)), no dropout.
"""

from __future__ import annotations

from longseq.mixers._gated_attention import GatedAttentionMixer, Positions
from longseq.mixers.base import InvalidHyper, Pattern, PositiveInt
from longseq.mixers.registry import register
from longseq.modules.tcn import DilatedTCN
from longseq.ops.biased_attention import Kernel


@register("tcnca")
class TCNCA(GatedAttentionMixer):
    complexity = "O(L · n_layers · kernel_size · d + L·c·(z+h) + L d (z+h+d))"
    state_formula = ("d·(R-1) (TCN windows, R = 1 + (kernel_size-1)·(f^n_layers - 1)/(f - 1)) + "
                     "(z+h)·(((L-1) mod c) + 1) (K and V of the current chunk)")
    # Receptive fields 7 and 9 tokens and chunks of 5 and 4: no output sees the whole test sequence (L 32).
    test_hypers = (
        {"z_dim": 4, "h_dim": 8, "n_layers": 2, "chunk_size": 5},
        {"z_dim": 4, "h_dim": 8, "n_layers": 2, "dilation_base": 3, "chunk_size": 4, "attention": "laplace",
         "positions": "rotary"},
    )

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        z_dim: PositiveInt | None = None,
        h_dim: PositiveInt | None = None,
        kernel_size: PositiveInt = 3,
        n_layers: PositiveInt = 4,
        dilation_base: PositiveInt = 2,
        chunk_size: PositiveInt = 128,
        attention: Kernel = "softmax",
        positions: Positions = "bias",
        max_positions: PositiveInt | None = None,
    ) -> None:
        """z_dim: shared q/k size (default d_model/2 capped at 64, even); h_dim: value size (default 2·d_model);
        kernel_size: K, taps per TCN block (odd in noncausal_self); n_layers: TCN blocks; dilation_base: f, block
        i's dilation is f^i; chunk_size: valid tokens per attention chunk; attention: softmax, laplace or relu2;
        positions: relative bias or rotary q, k; max_positions: the bias table's reach (default chunk_size)."""
        max_len, max_positions = self.resolve_positions(chunk_size=chunk_size, positions=positions, max_len=max_len,
                                                        max_positions=max_positions)
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        if not self.pattern.is_causal and kernel_size % 2 == 0:
            raise InvalidHyper(f"mixer '{self.name}': kernel_size={kernel_size} must be odd in pattern "
                               f"'{self.pattern.value}' (the taps are centred on each token); allowed: odd kernel "
                               f"sizes, or pattern '{Pattern.CAUSAL_SELF.value}'")
        self.chunk_size = chunk_size
        tcn = DilatedTCN(d_model, kernel_size=kernel_size, n_layers=n_layers, dilation_base=dilation_base,
                         causal=self.pattern.is_causal)
        self.build_mega(tcn, activate_context=True, z_dim=z_dim, h_dim=h_dim, chunk_size=chunk_size,
                        attention=attention, positions=positions, max_positions=max_positions)

    @property
    def receptive_field(self) -> int:
        """R, the tokens an output reaches through the convolutions (see the module docstring)."""
        return self.context_module.receptive_field

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * (self.receptive_field - 1) + self.attention.state_size(seq_len)
