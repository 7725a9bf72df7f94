"""The projections every attention-family mixer shares: queries, keys and values split into heads, and the output.

``HeadsMixer.build_heads`` creates q_proj, k_proj, v_proj (D -> D) and out_proj (D -> D) and checks the head count;
the helpers reshape between the model's (B, L, D) and the attention's per-head (B, H, L, dh) layout and finish an
output: merge the heads, project, and zero the masked positions (the output projection's bias would otherwise make
them non-zero). What differs between the methods — how queries meet keys — is theirs.

Self patterns take keys and values from x; cross patterns from ``context`` (the memory), projected once per call
(or once per stream in ``init_state``).
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from longseq.mixers.base import InvalidHyper, Mixer


class HeadsMixer(Mixer):
    """Base of the attention-family mixers; a subclass calls ``super().__init__`` then ``self.build_heads(n)``."""

    def build_heads(self, n_heads: int | None, *, bias: bool = False) -> None:
        """n_heads: default d_model // 64 (head size 64), at least 1; d_model must be divisible by it."""
        n_heads = max(1, self.d_model // 64) if n_heads is None else n_heads
        if self.d_model % n_heads:
            raise InvalidHyper(f"mixer '{self.name}': d_model={self.d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, self.d_model // n_heads
        self.q_proj = nn.Linear(self.d_model, self.d_model, bias=bias)
        self.k_proj = nn.Linear(self.d_model, self.d_model, bias=bias)
        self.v_proj = nn.Linear(self.d_model, self.d_model, bias=bias)
        self.out_proj = nn.Linear(self.d_model, self.d_model, bias=bias)

    def split_heads(self, t: Tensor) -> Tensor:
        """(B, L, D) -> (B, H, L, dh)."""
        return rearrange(t, "b l (h d) -> b h l d", h=self.n_heads)

    def queries(self, x: Tensor) -> Tensor:
        """x: (B, L, D) -> q: (B, H, L, dh)."""
        return self.split_heads(self.q_proj(x))

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """source: (B, S, D) (x in self patterns, the memory in cross ones) -> k, v: (B, H, S, dh)."""
        return self.split_heads(self.k_proj(source)), self.split_heads(self.v_proj(source))

    def finish(self, o: Tensor, mask: Tensor | None) -> Tensor:
        """o: (B, H, L, dh) -> y: (B, L, D), the heads merged and projected, 0 at masked positions."""
        y = self.out_proj(rearrange(o, "b h l d -> b l (h d)"))
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)
