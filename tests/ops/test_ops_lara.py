"""LARA's estimator: the batched form against the per-row, per-proposal oracle (outputs and gradients, with masked
keys, invalid proposals and an empty row); self-normalised importance sampling sanity: one proposal gives the
proposal's own softmax estimate, and a proposal set with one dominating weight reduces to its stats."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.lara import lara_attention, lara_attention_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _inputs(b=3, h=2, length=10, c=4, d=4, dv=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (0.7 * torch.randn(b, h, length, d, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(b, h, length, dv, generator=g, dtype=F64)
    mu = 0.5 * torch.randn(b, h, c, d, generator=g, dtype=F64)
    w = mu + torch.randn(b, h, c, d, generator=g, dtype=F64)
    return [t.requires_grad_() for t in (q, k, v, mu, w)]


@pytest.mark.parametrize("masked", [False, True])
def test_batched_form_matches_reference(masked):
    q, k, v, mu, w = _inputs()
    k_valid = c_valid = None
    if masked:
        k_valid = torch.ones(3, 10, dtype=torch.bool)
        k_valid[0, :4] = False
        k_valid[1, 3:5] = False
        k_valid[2] = False  # an empty row
        c_valid = torch.ones(3, 4, dtype=torch.bool)
        c_valid[1, 0] = False
        c_valid[2] = False
    got = lara_attention(q, k, v, mu, w, k_valid=k_valid, c_valid=c_valid)
    want = lara_attention_ref(q, k, v, mu, w, k_valid=k_valid, c_valid=c_valid)
    assert_same_function(got, want, [q, k, v, mu, w], names=["q", "k", "v", "mu", "proposals"])
    if masked:
        assert got[2].abs().max() == 0


def test_one_proposal_is_its_own_importance_sampling_estimate():
    """With C = 1 the weights are 1 and every query gets sum_m softmax_m(l(k_m)) v_m, which does not depend on q."""
    q, k, v, mu, w = (t.detach() for t in _inputs(c=1))
    out = lara_attention(q, k, v, mu, w)
    s = 4 ** -0.5
    p = torch.softmax(s * ((k * w).sum(-1) - k.pow(2).sum(-1) / 2), dim=-1)
    want = (p[..., None] * v).sum(dim=-2, keepdim=True).expand_as(out)
    torch.testing.assert_close(out, want, atol=1e-14, rtol=0)


def test_half_precision_keeps_the_dtype():
    q, k, v, mu, w = (t.detach().to(torch.bfloat16) for t in _inputs())
    out = lara_attention(q, k, v, mu, w)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_refusals():
    q, k, v, mu, w = _inputs()
    with pytest.raises(ValueError, match="proposals"):
        lara_attention(q, k, v, mu, w[..., :2, :])
