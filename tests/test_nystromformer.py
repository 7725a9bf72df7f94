"""Nyströmformer against its formula written out with its own weights (segment means by the row-by-row oracle, the
exact pseudo-inverse once the iteration has converged), with and without masks and the skip convolution; the
degenerate limit (at least L landmarks = exact softmax attention); a batch mixing short and long rows; refusals."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from longseq.mixers import InvalidHyper, PatternNotSupported, build
from longseq.ops.attention import softmax_attention_ref
from longseq.ops.landmarks import segment_means_ref
from longseq.ops.nystrom import depthwise_conv_same_ref, nystrom_attention_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _heads(m, x):
    def split(t):
        return rearrange(t, "b l (h d) -> b h l d", h=m.n_heads)

    return split(x @ m.q_proj.weight.T), split(x @ m.k_proj.weight.T), split(x @ m.v_proj.weight.T)


def _merge(m, o):
    return rearrange(o, "b h l d -> b l (h d)") @ m.out_proj.weight.T


def _explicit_nystrom(m, x, mask=None):
    """Row by row: exact attention when it has at most m valid tokens, else F pinv(A) B V on its valid tokens."""
    q, k, v = _heads(m, x)
    out = torch.zeros_like(q)
    for b in range(x.shape[0]):
        keep = slice(None) if mask is None else mask[b]
        qb, kb, vb = q[b:b + 1, :, keep], k[b:b + 1, :, keep], v[b:b + 1, :, keep]
        if qb.shape[2] <= m.n_landmarks:
            ob = softmax_attention_ref(qb, kb, vb)
        else:
            ql, kl = segment_means_ref(qb, m.n_landmarks)[0], segment_means_ref(kb, m.n_landmarks)[0]
            ob = nystrom_attention_ref(qb, kb, vb, ql, kl)
        if m.conv_weight is not None:
            ob = ob + depthwise_conv_same_ref(vb, m.conv_weight)
        out[b:b + 1, :, keep] = ob
    return _merge(m, out)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("conv_kernel", [None, 3])
def test_mixer_matches_explicit_formula(masked, conv_kernel):
    torch.manual_seed(0)
    m = build("nystromformer", 8, n_heads=2, n_landmarks=3, pinv_iterations=40, conv_kernel=conv_kernel).double()
    x = (0.5 * torch.randn(3, 11, 8, dtype=F64)).requires_grad_()
    mask = None
    if masked:
        mask = torch.ones(3, 11, dtype=torch.bool)
        mask[0, :3] = False  # left padding
        mask[1, 4:6] = False  # a hole
        mask[2, 3:] = False  # three valid tokens: the exact path, in the same batch
    got = m(x, mask=mask)
    want = _explicit_nystrom(m, x, mask)
    assert_same_function(got, want, [x, *m.parameters()], atol=1e-9, rtol=1e-8)


def test_at_least_as_many_landmarks_as_tokens_is_exact_attention():
    torch.manual_seed(1)
    m = build("nystromformer", 8, n_heads=2, n_landmarks=16).double()
    x = torch.randn(2, 16, 8, dtype=F64, requires_grad=True)
    q, k, v = _heads(m, x)
    assert_same_function(m(x), _merge(m, softmax_attention_ref(q, k, v)), [x, *m.parameters()])


def test_many_landmarks_approximate_exact_attention_better():
    """The approximation improves with m (smooth inputs: neighbouring tokens similar, as the segment means assume)."""
    torch.manual_seed(2)
    x = torch.cumsum(0.3 * torch.randn(1, 64, 16, dtype=F64), dim=1)
    weights = build("nystromformer", 16, n_heads=1).double().state_dict()
    errors = []
    for landmarks in (2, 8, 32):
        m = build("nystromformer", 16, n_heads=1, n_landmarks=landmarks).double()
        m.load_state_dict(weights)
        with torch.no_grad():
            exact = _merge(m, softmax_attention_ref(*_heads(m, x)))
            errors.append(((m(x) - exact).norm() / exact.norm()).item())
    assert errors[0] > errors[1] > errors[2]


def test_refusals():
    for pattern in ("causal_self", "causal_cross", "noncausal_cross"):
        with pytest.raises(PatternNotSupported, match="noncausal_self"):
            build("nystromformer", 16, pattern=pattern)
    with pytest.raises(InvalidHyper, match="conv_kernel=4 must be odd"):
        build("nystromformer", 16, conv_kernel=4)
    with pytest.raises(InvalidHyper, match="n_landmarks"):
        build("nystromformer", 16, n_landmarks=0)
