"""The attention mixer against a from-scratch computation with its own weights (RoPE by the complex-number
oracle, attention by the one-query-at-a-time oracle), in all four patterns; impls, defaults, CUDA."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from longseq.mixers import build
from longseq.ops.attention import softmax_attention_ref
from longseq.ops.rotary import apply_rotary_ref
from longseq.testing.oracle import assert_same_function

torch.manual_seed(0)


def _explicit_attention(m, x, context=None, mask=None, context_mask=None):
    """The mixer's function written out with its own weights, RoPE by the complex oracle, attention by the oracle."""
    h = m.n_heads
    def heads(t):
        return rearrange(t, "b l (h d) -> b h l d", h=h)
    q = heads(x @ m.q_proj.weight.T)
    src = x if context is None else context
    k, v = heads(src @ m.k_proj.weight.T), heads(src @ m.v_proj.weight.T)
    if context is None:
        pos = torch.arange(x.shape[1]).expand(x.shape[0], -1) if mask is None else (mask.cumsum(1) - 1).clamp(min=0)
        q, k = apply_rotary_ref(q, pos), apply_rotary_ref(k, pos)
        o = softmax_attention_ref(q, k, v, causal=m.pattern.is_causal, q_valid=mask, k_valid=mask)
    else:
        o = softmax_attention_ref(q, k, v, q_valid=mask, k_valid=context_mask)
    return rearrange(o, "b h l d -> b l (h d)") @ m.out_proj.weight.T


@pytest.mark.parametrize("impl", ["sdpa", "math"])
@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self", "causal_cross", "noncausal_cross"])
@pytest.mark.parametrize("masked", [False, True])
def test_mixer_matches_explicit_computation(impl, pattern, masked):
    torch.manual_seed(0)
    m = build("attention", 16, pattern=pattern, n_heads=2, impl=impl).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(2, 7, 16, dtype=torch.float64) if "cross" in pattern else None
    mask = ctx_mask = None
    if masked:
        mask = torch.ones(2, 10, dtype=torch.bool)
        mask[0, :3] = False
        if ctx is not None:
            ctx_mask = torch.ones(2, 7, dtype=torch.bool)
            ctx_mask[1, 5:] = False
    got = m(x, context=ctx, mask=mask, context_mask=ctx_mask)
    want = _explicit_attention(m, x, ctx, mask, ctx_mask)
    assert_same_function(got, want, [x, *m.parameters()])


def test_impls_agree_in_float32():
    torch.manual_seed(0)
    a = build("attention", 32, n_heads=4, impl="sdpa")
    b = build("attention", 32, n_heads=4, impl="math")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 64, 32)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-4)


def test_default_heads_follow_head_size_64():
    assert build("attention", 64).n_heads == 1
    assert build("attention", 256).n_heads == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self", "causal_cross", "noncausal_cross"])
def test_cuda_matches_cpu(pattern):
    torch.manual_seed(0)
    m = build("attention", 32, pattern=pattern, n_heads=4).eval()
    x = torch.randn(2, 40, 32)
    ctx = torch.randn(2, 24, 32) if "cross" in pattern else None
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, :5] = False
    want = m(x, context=ctx, mask=mask)
    got = m.cuda()(x.cuda(), context=None if ctx is None else ctx.cuda(), mask=mask.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
    if pattern.startswith("causal"):
        state = m.init_state(2, context=None if ctx is None else ctx.cuda())
        assert state.to("cpu").num_floats() == state.num_floats()
        y, _ = m.forward_stream(x.cuda(), state)
        torch.testing.assert_close(y.cpu(), m.cpu()(x, context=ctx), atol=1e-4, rtol=1e-4)
