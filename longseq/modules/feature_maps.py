"""FavorFeatures: the Performer's FAVOR+ feature map with its random projection (math in
``longseq.ops.feature_maps``).

The projection is a buffer, so it is saved with the model and moves with ``.to()``. In training, with
``redraw_in_training``, ``forward`` draws a fresh one (torch's global RNG) before featurizing — the Performer's
feature redrawing, which keeps the model from fitting one draw; the last draw stays in the buffer. In eval the
projection is fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longseq.ops.feature_maps import orthogonal_gaussian_matrix, positive_random_features


class FavorFeatures(nn.Module):
    def __init__(self, dim: int, n_features: int, *, redraw_in_training: bool = True, seed: int = 0) -> None:
        """dim: size d of a query/key; n_features: m random features; seed: the initial projection's draw."""
        super().__init__()
        self.dim, self.n_features, self.redraw_in_training = dim, n_features, redraw_in_training
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", orthogonal_gaussian_matrix(n_features, dim, generator))

    def redraw(self) -> None:
        """A fresh projection from torch's global RNG."""
        # A new tensor, not an in-place copy: a graph built by an earlier call may still need the old one.
        self.projection = orthogonal_gaussian_matrix(self.n_features, self.dim, device=self.projection.device,
                                                     dtype=self.projection.dtype)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q: (..., Lq, d), k: (..., Lk, d) -> (phi(q): (..., Lq, m), phi(k): (..., Lk, m)), both with the same
        projection: a redraw (training, ``redraw_in_training``) happens once per call, never between q and k."""
        if self.training and self.redraw_in_training:
            self.redraw()
        return self.features(q, is_query=True), self.features(k, is_query=False)

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        """x: (..., d) -> (..., m) with the current projection, no redraw (streaming and step use this). Queries
        are stabilized per token (exact: the factor cancels in normalised attention); keys are not (a per-key
        factor would reweight them)."""
        return positive_random_features(x, self.projection, is_query=is_query,
                                        stabilizer="per_token" if is_query else "none")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_features={self.n_features}, redraw_in_training={self.redraw_in_training}"
