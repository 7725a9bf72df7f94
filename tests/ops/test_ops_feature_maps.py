"""Linear-attention feature maps: elu+1 and relu by their formulas; cosFormer's re-weighting against the explicit
cos-weighted kernel; FAVOR+ — the orthogonal gaussian projection's structure and distribution, the unbiased
softmax-kernel estimate (statistically), the stabilizer rules (what cancels and what would not), gradients by finite
differences, refusals."""

from __future__ import annotations

import math

import pytest
import torch

from longseq.ops.feature_maps import (
    cos_reweighted,
    elu_plus_one,
    orthogonal_gaussian_matrix,
    positive_random_features,
    relu_feature,
)

F64 = torch.float64


def test_elementwise_maps_follow_their_formulas():
    x = torch.linspace(-4, 4, 41, dtype=F64)
    torch.testing.assert_close(elu_plus_one(x), torch.where(x > 0, x + 1, torch.exp(x)), atol=1e-15, rtol=0)
    assert (elu_plus_one(x) > 0).all()
    torch.testing.assert_close(relu_feature(x), x.clamp(min=0), atol=0, rtol=0)


@pytest.mark.parametrize("span", [12.0, "per_row"])
def test_cos_reweighting_is_the_cos_weighted_kernel(span):
    """cosFormer's decomposition: phi'(q_i) . phi'(k_j) = (phi(q_i) . phi(k_j)) cos(pi (i - j) / 2M), pair by pair,
    with a span per row or shared; and its gradient by finite differences."""
    g = torch.Generator().manual_seed(0)
    phi_q, phi_k = (relu_feature(torch.randn(2, 3, 7, 4, generator=g, dtype=F64)) for _ in range(2))
    pos_q = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [1, 1, 2, 3, 5, 8, 9]])
    pos_k = torch.tensor([[2, 4, 6, 8, 10, 11, 12], [1, 2, 3, 4, 5, 6, 7]])
    spans = torch.tensor([12.0, 9.0], dtype=F64) if span == "per_row" else torch.full((2,), span, dtype=F64)
    got = cos_reweighted(phi_q, pos_q, spans if span == "per_row" else span) @ cos_reweighted(
        phi_k, pos_k, spans if span == "per_row" else span).transpose(-2, -1)
    want = torch.empty(2, 3, 7, 7, dtype=F64)
    for b in range(2):
        for i in range(7):
            for j in range(7):
                weight = math.cos(math.pi * (pos_q[b, i] - pos_k[b, j]).item() / (2 * spans[b].item()))
                want[b, :, i, j] = (phi_q[b, :, i] * phi_k[b, :, j]).sum(-1) * weight
    torch.testing.assert_close(got, want, atol=1e-14, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda p: cos_reweighted(p, pos_q, spans), (phi_q.clone().requires_grad_(),))


def test_cos_reweighting_keeps_half_precision_and_refuses_bad_shapes():
    phi = torch.rand(1, 2, 5, 4).to(torch.bfloat16)
    pos = torch.arange(1, 6)[None] * 1000
    got = cos_reweighted(phi, pos, 5000.0)
    assert got.dtype == torch.bfloat16 and got.shape == (1, 2, 5, 8)
    torch.testing.assert_close(got, cos_reweighted(phi.double(), pos, 5000.0).to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"positions \(B, L\)"):
        cos_reweighted(phi, pos[:, :3], 10.0)
    with pytest.raises(ValueError, match=r"span must be a number or have shape \(B,\)"):
        cos_reweighted(phi, pos, torch.ones(3))


@pytest.mark.parametrize(("n_features", "dim"), [(20, 8), (8, 8), (3, 8)])
def test_projection_blocks_are_orthogonal_with_chi_norms(n_features, dim):
    w = orthogonal_gaussian_matrix(n_features, dim, torch.Generator().manual_seed(0), dtype=F64)
    assert w.shape == (n_features, dim)
    norms = w.norm(dim=1, keepdim=True)
    for start in range(0, n_features, dim):
        block = (w / norms)[start:start + dim]
        torch.testing.assert_close(block @ block.T, torch.eye(block.shape[0], dtype=F64), atol=1e-12, rtol=0)
    assert norms.std() > 0.05  # chi-distributed norms, not all sqrt(dim)
    again = orthogonal_gaussian_matrix(n_features, dim, torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(w, again)


def test_projection_rows_are_marginally_standard_gaussian():
    g = torch.Generator().manual_seed(1)
    rows = orthogonal_gaussian_matrix(4000, 8, g, dtype=F64)  # 500 blocks
    torch.testing.assert_close(rows.mean(dim=0), torch.zeros(8, dtype=F64), atol=0.08, rtol=0)
    torch.testing.assert_close(rows.T @ rows / rows.shape[0], torch.eye(8, dtype=F64), atol=0.1, rtol=0)
    # A gaussian's 4th moment is 3; a uniform direction times a constant norm sqrt(8) would give 8*3/10 = 2.4.
    assert rows.pow(4).mean().item() == pytest.approx(3.0, rel=0.1)


def test_favor_estimates_the_softmax_kernel():
    """E[phi(q).phi(k)] = exp(q.k): with 16384 features the estimate is within a few percent for every pair and
    unbiased on average (the relative standard deviation here is about 1%)."""
    g = torch.Generator().manual_seed(0)
    q, k = (0.25 * torch.randn(32, 8, generator=g, dtype=F64) for _ in range(2))
    w = orthogonal_gaussian_matrix(16384, 8, torch.Generator().manual_seed(2), dtype=F64)
    estimate = (positive_random_features(q, w, is_query=True) * positive_random_features(k, w, is_query=False)).sum(-1)
    relative = estimate / torch.exp((q * k).sum(-1)) - 1
    assert relative.abs().max() < 0.06
    assert relative.mean().abs() < 0.01


def _linear_attention(phi_q, phi_k, v):
    """Causal normalised linear attention, by prefix sums: the consumer the stabilizer rules are about."""
    kv = torch.cumsum(phi_k[..., :, None] * v[..., None, :], dim=-3)  # (L, m, dv)
    z = torch.cumsum(phi_k, dim=-2)
    return torch.einsum("lm,lmd->ld", phi_q, kv) / (phi_q * z).sum(-1, keepdim=True)


def test_query_stabilizer_and_a_shared_key_constant_cancel():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(10, 8, generator=g, dtype=F64) for _ in range(3))
    w = orthogonal_gaussian_matrix(64, 8, torch.Generator().manual_seed(4), dtype=F64)
    plain = _linear_attention(positive_random_features(q, w, is_query=True),
                              positive_random_features(k, w, is_query=False), v)
    stable = _linear_attention(positive_random_features(q, w, is_query=True, stabilizer="per_token"),
                               positive_random_features(k, w, is_query=False, stabilizer=3.5), v)
    torch.testing.assert_close(stable, plain, atol=1e-12, rtol=1e-10)
    phi_q = positive_random_features(q, w, is_query=True, stabilizer="per_token")
    assert phi_q.amax(dim=-1).sub(1 / math.sqrt(64)).abs().max() < 1e-15  # each query's largest feature is 1/sqrt(m)
    # Why keys refuse "per_token": a per-key factor changes the attention weights.
    per_key = positive_random_features(k, w, is_query=False) * torch.exp(-torch.arange(10.0, dtype=F64))[:, None]
    assert not torch.allclose(_linear_attention(phi_q, per_key, v), plain)


def test_query_stabilizer_prevents_underflow_in_float32():
    """A long query: every exponent w.q - |q|^2/2 is far below float32's range, so without the stabilizer all its
    features are 0 and normalised attention would divide 0 by 0."""
    w = orthogonal_gaussian_matrix(16, 8, torch.Generator().manual_seed(5))
    q = 30.0 * w[:1] / w[:1].norm()
    assert positive_random_features(q, w, is_query=True).abs().max() == 0
    phi = positive_random_features(q, w, is_query=True, stabilizer="per_token")
    assert phi.max().item() == pytest.approx(1 / 4)


def test_gradients_match_finite_differences():
    """The per-query max is detached (it cancels), so check the gradient of what it feeds: normalised attention."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(5, 4, generator=g, dtype=F64, requires_grad=True) for _ in range(3))
    w = orthogonal_gaussian_matrix(8, 4, torch.Generator().manual_seed(7), dtype=F64).requires_grad_()

    def attention(q, k, v, w):
        return _linear_attention(positive_random_features(q, w, is_query=True, stabilizer="per_token"),
                                 positive_random_features(k, w, is_query=False), v)

    assert torch.autograd.gradcheck(attention, (q, k, v, w))
    assert torch.autograd.gradcheck(lambda x, w: positive_random_features(x, w, is_query=False), (k, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computes_in_float32(dtype):
    x = torch.randn(4, 8).to(dtype)
    w = orthogonal_gaussian_matrix(16, 8, torch.Generator().manual_seed(8))
    got = positive_random_features(x, w.to(dtype), is_query=True, stabilizer="per_token")
    assert got.dtype == dtype
    want = positive_random_features(x.double(), w.to(dtype).double(), is_query=True, stabilizer="per_token")
    torch.testing.assert_close(got, want.to(dtype))


@pytest.mark.parametrize(("call", "words"), [
    (lambda x, w: positive_random_features(x, w, is_query=False, stabilizer="per_token"),
     ["stabilizer='per_token' is not allowed for keys", "allowed for keys: 'none' or a float"]),
    (lambda x, w: positive_random_features(x, w, is_query=True, stabilizer="global"),
     ["stabilizer='global' is not allowed", "'none', 'per_token'"]),
    (lambda x, w: positive_random_features(x, w[:, :4], is_query=True),
     ["projection must have shape (m, d)", "(16, 4)"]),
    (lambda x, w: orthogonal_gaussian_matrix(0, 8), ["n_features=0", "positive integer"]),
    (lambda x, w: orthogonal_gaussian_matrix(4, -1), ["dim=-1"]),
])
def test_refusals_name_the_argument(call, words):
    with pytest.raises(ValueError) as info:
        call(torch.randn(3, 8), orthogonal_gaussian_matrix(16, 8))
    for word in words:
        assert word in str(info.value)
