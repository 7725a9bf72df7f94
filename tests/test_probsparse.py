"""The probsparse mixer against its function written out with its own weights (RoPE by the complex oracle, each row's
valid tokens alone, the per-query ProbSparse oracle), the degenerate limit u >= L (= the attention mixer), and its
randomness: fixed by ``seed`` in eval, fresh per forward in training."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from longseq.mixers import PatternNotSupported, build
from longseq.ops.probsparse import n_top, probsparse_attention_ref, sample_keys
from longseq.ops.rotary import apply_rotary_ref
from longseq.testing.oracle import assert_same_function


def _explicit(m, x, mask):
    """Row by row on the valid tokens: projections, RoPE at positions 0..n-1, the oracle, the output projection."""
    out = torch.zeros_like(x)
    h = m.n_heads
    for b in range(x.shape[0]):
        xv = x[b: b + 1, mask[b]]
        n = xv.shape[1]
        if n == 0:
            continue
        q, k, v = (rearrange(xv @ w.weight.T, "b l (h d) -> b h l d", h=h) for w in (m.q_proj, m.k_proj, m.v_proj))
        pos = torch.arange(n)[None]
        q, k = apply_rotary_ref(q, pos), apply_rotary_ref(k, pos)
        sample, sample_valid = sample_keys(torch.tensor([n]), n, m.factor, m.seed)
        o = probsparse_attention_ref(q, k, v, sample, sample_valid, torch.tensor([n_top(n, m.factor)]))
        out[b, mask[b]] = (rearrange(o, "b h l d -> b l (h d)") @ m.out_proj.weight.T)[0]
    return out


@pytest.mark.parametrize("factor", [1, 2])
def test_mixer_matches_explicit_computation(factor):
    torch.manual_seed(0)
    m = build("probsparse", 16, n_heads=2, factor=factor, seed=3).double().eval()
    x = torch.randn(3, 20, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[0, :4] = False
    mask[1, [2, 7, 8, 15]] = False
    got = m(x, mask=mask)
    assert_same_function(got, _explicit(m, x, mask), [x, *m.parameters()])


def test_every_query_active_equals_the_attention_mixer():
    """u = factor·ceil(ln L) >= L: all queries are active, so ProbSparse is exact softmax attention (same weights,
    same RoPE over valid tokens)."""
    torch.manual_seed(0)
    m = build("probsparse", 16, n_heads=2, factor=100).double().eval()
    ref = build("attention", 16, pattern="noncausal_self", n_heads=2, impl="math").double().eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 24, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[1, 17:] = False
    assert_same_function(m(x, mask=mask), ref(x, mask=mask), [x])


def test_lazy_queries_share_one_output():
    """With u < L most queries are lazy: before the output projection they all hold mean(V), so after it too."""
    torch.manual_seed(0)
    m = build("probsparse", 16, n_heads=1, factor=1, rope=False).double().eval()
    y = m(torch.randn(1, 40, 16, dtype=torch.float64))[0]
    distinct = torch.unique(y.round(decimals=9), dim=0).shape[0]
    assert distinct == n_top(40, 1) + 1  # the active queries, and the one lazy output


def test_seed_fixes_eval_and_training_redraws():
    torch.manual_seed(0)
    m = build("probsparse", 16, n_heads=2, factor=1, seed=0).double().eval()
    x = torch.randn(2, 64, 16, dtype=torch.float64)
    y = m(x)
    assert torch.equal(y, m(x))
    other = build("probsparse", 16, n_heads=2, factor=1, seed=1).double().eval()
    other.load_state_dict(m.state_dict())
    assert not torch.equal(y, other(x))
    m.train()
    assert not torch.equal(m(x), m(x))


@pytest.mark.parametrize("pattern", ["causal_self", "causal_cross", "noncausal_cross"])
def test_only_noncausal_self_is_supported(pattern):
    with pytest.raises(PatternNotSupported, match="supports: noncausal_self"):
        build("probsparse", 16, pattern=pattern)


def test_default_pattern_builds():
    assert build("probsparse", 64).pattern.value == "noncausal_self"
