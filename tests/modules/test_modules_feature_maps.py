"""FavorFeatures: a fixed projection in eval, a fresh one per forward in training (only with redraw_in_training),
the same projection for the queries and keys of one call, seeding, saving, dtypes."""

from __future__ import annotations

import torch

from longseq.modules import FavorFeatures
from longseq.ops.feature_maps import orthogonal_gaussian_matrix, positive_random_features

F64 = torch.float64


def _qk(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(2, 10, 8, generator=g) for _ in range(2))


def test_eval_uses_the_seeded_projection():
    favor = FavorFeatures(8, 32, seed=3).eval()
    q, k = _qk()
    projection = orthogonal_gaussian_matrix(32, 8, torch.Generator().manual_seed(3))
    assert torch.equal(favor.projection, projection)
    phi_q, phi_k = favor(q, k)
    torch.testing.assert_close(phi_q, positive_random_features(q, projection, is_query=True, stabilizer="per_token"))
    torch.testing.assert_close(phi_k, positive_random_features(k, projection, is_query=False))
    again = favor(q, k)
    assert torch.equal(again[0], phi_q) and torch.equal(again[1], phi_k)
    assert not torch.equal(FavorFeatures(8, 32, seed=4).projection, projection)


def test_training_redraws_once_per_forward():
    favor = FavorFeatures(8, 32).train()
    q, k = _qk()
    seen = []
    for _ in range(2):
        phi_q, phi_k = favor(q, k)
        # Queries and keys of one call share the projection left in the buffer.
        torch.testing.assert_close(phi_q, favor.features(q, is_query=True))
        torch.testing.assert_close(phi_k, favor.features(k, is_query=False))
        seen.append(favor.projection)
    assert not torch.equal(seen[0], seen[1])
    torch.manual_seed(11)
    favor(q, k)
    first = favor.projection
    torch.manual_seed(11)
    favor(q, k)
    assert torch.equal(first, favor.projection)  # drawn from torch's global RNG


def test_training_without_redraw_keeps_the_projection():
    favor = FavorFeatures(8, 32, redraw_in_training=False).train()
    before = favor.projection.clone()
    favor(*_qk())
    assert torch.equal(favor.projection, before)


def test_redraw_keeps_earlier_graphs_usable_and_dtype():
    favor = FavorFeatures(8, 32).to(F64).train()
    q, k = (t.double().requires_grad_() for t in _qk())
    phi_q, _ = favor(q, k)
    favor(q, k)  # a redraw between an earlier forward and its backward
    (grad,) = torch.autograd.grad(phi_q.sum(), q)
    assert torch.isfinite(grad).all()
    assert favor.projection.dtype == F64


def test_projection_is_saved():
    favor = FavorFeatures(8, 16, seed=1)
    restored = FavorFeatures(8, 16, seed=2)
    restored.load_state_dict(favor.state_dict())
    assert torch.equal(restored.projection, favor.projection)
