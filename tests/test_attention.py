"""Softmax attention: fast forms vs the explicit oracle (outputs and gradients, float64), RoPE vs its complex-number
oracle, and the attention mixer vs a from-scratch computation with its own weights, in all four patterns."""

from __future__ import annotations

import itertools

import pytest
import torch
from einops import rearrange

from longseq.mixers import build
from longseq.ops.attention import attention_ref, softmax_attention
from longseq.ops.rotary import apply_rotary, apply_rotary_ref, rotary_cos_sin

torch.manual_seed(0)


def _qkv(lq: int, lk: int, b: int = 2, h: int = 2, d: int = 8):
    g = torch.Generator().manual_seed(lq * 100 + lk)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64, requires_grad=True) for n in (lq, lk, lk)]


def _masks(lq: int, lk: int):
    q_valid = torch.ones(2, lq, dtype=torch.bool)
    q_valid[0, :2] = False  # left padding
    k_valid = torch.ones(2, lk, dtype=torch.bool)
    k_valid[1, -3:] = False  # right padding
    k_valid[0, :3] = False  # with causal, early queries of row 0 see no valid key at all
    return q_valid, k_valid


@pytest.mark.parametrize(("impl", "causal", "masked", "shape"), list(itertools.product(
    ["sdpa", "math"], [False, True], [False, True], [(9, 9), (1, 9), (4, 9), (7, 5)])))
def test_softmax_attention_matches_reference(impl, causal, masked, shape):
    lq, lk = shape
    if causal and lq > lk:
        pytest.skip("bottom-right causal alignment needs Lq <= Lk")
    q, k, v = _qkv(lq, lk)
    q_valid, k_valid = _masks(lq, lk) if masked else (None, None)
    want = attention_ref(q, k, v, causal=causal, q_valid=q_valid, k_valid=k_valid)
    got = softmax_attention(q, k, v, causal=causal, q_valid=q_valid, k_valid=k_valid, impl=impl)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    cot = torch.randn_like(want)
    g_want = torch.autograd.grad((want * cot).sum(), (q, k, v))
    g_got = torch.autograd.grad((got * cot).sum(), (q, k, v))
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_reference_zeroes_rows_without_keys():
    q, k, v = _qkv(4, 4)
    k_valid = torch.zeros(2, 4, dtype=torch.bool)
    out = attention_ref(q, k, v, k_valid=k_valid)
    assert out.abs().max() == 0
    assert softmax_attention(q, k, v, k_valid=k_valid, impl="math").abs().max() == 0


def test_rotary_matches_complex_oracle_and_is_relative():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    pos = torch.randint(0, 1000, (2, 5))
    cos, sin = rotary_cos_sin(pos, 8, dtype=torch.float64)
    torch.testing.assert_close(apply_rotary(x, cos, sin), apply_rotary_ref(x, pos))
    # <R(m) q, R(n) k> depends on m - n only.
    q, k = torch.randn(2, 1, 1, 8, dtype=torch.float64)
    def dot(m: int, n: int) -> float:
        cm, sm = rotary_cos_sin(torch.tensor([[m]]), 8, dtype=torch.float64)
        cn, sn = rotary_cos_sin(torch.tensor([[n]]), 8, dtype=torch.float64)
        return float((apply_rotary(q[None], cm, sm) * apply_rotary(k[None], cn, sn)).sum())
    assert dot(7, 3) == pytest.approx(dot(104, 100), abs=1e-10)


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
        o = attention_ref(q, k, v, causal=m.pattern.is_causal, q_valid=mask, k_valid=mask)
    else:
        o = attention_ref(q, k, v, q_valid=mask, k_valid=context_mask)
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
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    cot = torch.randn_like(got)
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad((got * cot).sum(), params),
                    torch.autograd.grad((want * cot).sum(), params), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


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


def test_sdpa_causal_without_padding_takes_the_fused_path(monkeypatch):
    """No L x L mask may be built for the common case: SDPA's is_causal kernels are several times faster."""
    import longseq.ops.attention as ops

    def no_mask(*args, **kwargs):
        raise AssertionError("attention_mask was built")

    monkeypatch.setattr(ops, "attention_mask", no_mask)
    q, k, v = _qkv(9, 9)
    ops.softmax_attention(q, k, v, causal=True, impl="sdpa")


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
