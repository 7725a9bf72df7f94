"""LARA against its estimator written out with its own weights (proposals from the row-by-row segment means, the
per-proposal oracle), with masks and short rows; eval is deterministic and noise-free, training draws fresh
proposals; limits: one key is exact attention, constant values are reproduced exactly; refusals."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from longseq.mixers import PatternNotSupported, build
from longseq.ops.landmarks import segment_means_ref
from longseq.ops.lara import lara_attention_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _heads(m, x):
    def split(t):
        return rearrange(t, "b l (h d) -> b h l d", h=m.n_heads)

    return split(x @ m.q_proj.weight.T), split(x @ m.k_proj.weight.T), split(x @ m.v_proj.weight.T)


def _explicit_lara(m, x, mask=None, noise=None):
    q, k, v = _heads(m, x)
    q_bar, c_valid = segment_means_ref(q, m.n_proposals, mask)
    mu = q_bar + segment_means_ref(k, m.n_proposals, mask)[0]
    o = lara_attention_ref(q, k, v, mu, mu if noise is None else mu + noise, k_valid=mask, c_valid=c_valid)
    if mask is not None:
        o = o.masked_fill(~mask[:, None, :, None], 0.0)
    return rearrange(o, "b h l d -> b l (h d)") @ m.out_proj.weight.T


@pytest.mark.parametrize("masked", [False, True])
def test_eval_matches_explicit_estimator(masked):
    torch.manual_seed(0)
    m = build("lara", 8, n_heads=2, n_proposals=3).double().eval()
    x = torch.randn(3, 10, 8, dtype=F64, requires_grad=True)
    mask = None
    if masked:
        mask = torch.ones(3, 10, dtype=torch.bool)
        mask[0, :3] = False
        mask[1, 4:6] = False
        mask[2, 2:] = False  # two valid tokens: fewer than the proposals
    assert_same_function(m(x, mask=mask), _explicit_lara(m, x, mask), [x, *m.parameters()])


def test_training_draws_standard_gaussian_proposals():
    """In train() the proposals are mu + N(0, I) from torch's RNG: the same seed gives the explicit estimator with
    that noise; another seed gives another output; eval() uses mu itself."""
    torch.manual_seed(1)
    m = build("lara", 8, n_heads=2, n_proposals=3).double().train()
    x = torch.randn(2, 9, 8, dtype=F64)
    torch.manual_seed(5)
    y = m(x)
    torch.manual_seed(5)
    noise = torch.randn(2, 2, 3, 4, dtype=F64)
    torch.testing.assert_close(y, _explicit_lara(m, x, noise=noise), atol=1e-12, rtol=0)
    assert not torch.allclose(m(x), y)
    m.eval()
    assert torch.equal(m(x), m(x))


def test_one_key_is_exact_attention():
    torch.manual_seed(2)
    m = build("lara", 8, n_heads=2, n_proposals=4).double().eval()
    x = torch.randn(2, 1, 8, dtype=F64)
    _, _, v = _heads(m, x)
    torch.testing.assert_close(m(x), rearrange(v, "b h l d -> b l (h d)") @ m.out_proj.weight.T, atol=1e-14, rtol=0)


def test_constant_values_are_reproduced():
    """The output is a convex combination of values (importance weights and key softmaxes each sum to 1)."""
    torch.manual_seed(3)
    m = build("lara", 8, n_heads=2, n_proposals=3).double().eval()
    with torch.no_grad():
        m.v_proj.weight.zero_()
        m.v_proj.weight[:, 0] = 1.0  # every value = x[..., 0] broadcast; constant x[..., 0] below
    x = torch.randn(2, 12, 8, dtype=F64)
    x[..., 0] = 0.7
    v_const = torch.full((2, 12, 8), 0.7, dtype=F64) @ m.out_proj.weight.T
    torch.testing.assert_close(m(x), v_const, atol=1e-13, rtol=0)


def test_other_patterns_are_refused():
    for pattern in ("causal_self", "causal_cross", "noncausal_cross"):
        with pytest.raises(PatternNotSupported, match="noncausal_self"):
            build("lara", 16, pattern=pattern)
