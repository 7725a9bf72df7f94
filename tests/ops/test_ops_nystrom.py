"""Nyström ops: the Newton–Schulz pseudo-inverse against torch.linalg.pinv (convergence, the paper's 6 steps on
softmax matrices, per-matrix scaling), the fast right-to-left Nyström attention against the formula with the exact
pseudo-inverse (outputs and gradients), its degenerate limit (every token a landmark = exact softmax attention),
masked keys, and the masked centred depthwise convolution against its loop."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.attention import softmax_attention_ref
from longseq.ops.landmarks import segment_means
from longseq.ops.nystrom import (
    depthwise_conv_same,
    depthwise_conv_same_ref,
    iterative_pinv,
    nystrom_attention,
    nystrom_attention_ref,
    pinv_ref,
)
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _softmax_matrices(n=3, m=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, m, m, generator=g, dtype=F64), dim=-1)


def test_iterative_pinv_converges_to_pinv_with_its_gradient():
    a = _softmax_matrices().requires_grad_()
    assert_same_function(iterative_pinv(a, n_iter=40), pinv_ref(a), [a], atol=1e-9, rtol=1e-8)


def test_six_iterations_invert_a_well_conditioned_softmax_matrix():
    """The paper's 6 steps: the residual |AZ - I| falls at a cubic-or-better rate once Z is close; for softmax
    matrices with a dominant diagonal (landmarks that are distinct) it is at rounding level after 6."""
    g = torch.Generator().manual_seed(1)
    a = torch.softmax(3 * torch.eye(8, dtype=F64) + torch.randn(20, 8, 8, generator=g, dtype=F64), dim=-1)
    residuals = [(a @ iterative_pinv(a, n) - torch.eye(8, dtype=F64)).abs().amax(dim=(-1, -2)).median().item()
                 for n in (2, 4, 6)]
    assert residuals[0] > residuals[1] > residuals[2] and residuals[2] < 1e-10


def test_pinv_scaling_is_per_matrix():
    """One matrix's Z0 does not depend on another's entries (batch rows stay independent)."""
    a = _softmax_matrices()
    b = a.clone()
    b[1] = 10 * b[1]
    torch.testing.assert_close(iterative_pinv(b)[0], iterative_pinv(a)[0], atol=0, rtol=0)


def test_iterative_pinv_of_a_singular_matrix_is_finite_and_tends_to_pinv():
    a = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(iterative_pinv(a, n_iter=60), pinv_ref(a), atol=1e-8, rtol=0)


def _qkv(b=2, h=2, length=12, d=4, dv=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (0.5 * torch.randn(b, h, length, d, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(b, h, length, dv, generator=g, dtype=F64)
    return [t.requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("masked", [False, True])
def test_fast_form_matches_the_formula_with_exact_pinv(masked):
    q, k, v = _qkv()
    valid = None
    if masked:
        valid = torch.ones(2, 12, dtype=torch.bool)
        valid[0, :3] = False
        valid[1, 5:7] = False
    def landmarks():  # one graph per call: the comparison backpropagates through each separately
        return segment_means(q, 4, valid)[0], segment_means(k, 4, valid)[0]

    got = nystrom_attention(q, k, v, *landmarks(), k_valid=valid, n_iter=40)
    want = nystrom_attention_ref(q, k, v, *landmarks(), k_valid=valid)
    assert_same_function(got, want, [q, k, v], names=["q", "k", "v"], atol=1e-9, rtol=1e-8)


def test_every_token_a_landmark_is_exact_attention():
    q, k, v = _qkv(length=6)
    got = nystrom_attention(q, k, v, q, k, n_iter=40)
    assert_same_function(got, softmax_attention_ref(q, k, v), [q, k, v], atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_depthwise_conv_matches_reference(masked, kernel):
    g = torch.Generator().manual_seed(kernel)
    v = torch.randn(3, 2, 9, 4, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(2, kernel, generator=g, dtype=F64, requires_grad=True)
    valid = None
    if masked:
        valid = torch.rand(3, 9, generator=g) < 0.6
        valid[2] = False
    assert_same_function(depthwise_conv_same(v, w, valid), depthwise_conv_same_ref(v, w, valid), [v, w])


def test_refusals_name_the_argument():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="n_iter=-1"):
        iterative_pinv(_softmax_matrices(), n_iter=-1)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., m, m\)"):
        iterative_pinv(torch.ones(2, 3))
    with pytest.raises(ValueError, match="K odd"):
        depthwise_conv_same(v, torch.ones(2, 2))
    with pytest.raises(ValueError, match="landmarks"):
        nystrom_attention(q, k, v, q[..., :3, :], k[..., :2, :])
