"""The linear-attention mixers (linear_attention, performer, cosformer) against their functions written out with
their own weights as explicit quadratic forms (elu+1 kernel; FAVOR+ features without a stabilizer; ReLU kernel times
cos(pi (i - j) / 2M) over positions of valid tokens), in every supported pattern, with masks, outputs and gradients;
chunk-size invariance; causal cross = non-causal cross; Performer's redraws, determinism and approximation of softmax
attention; cosFormer's patterns, spans, refusals and degenerate limit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from longseq.mixers import Pattern, PatternNotSupported, SequenceTooLong, build
from longseq.mixers.cosformer import TooManyPositions
from longseq.ops.attention import softmax_attention_ref
from longseq.ops.feature_maps import cos_reweighted
from longseq.ops.linear_attention import linear_attention_chunked, linear_attention_ref
from longseq.testing.contract import prefix_violation
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
EPS = 1e-6


def _split(t, h=2):
    """(B, L, D) -> (B, H, L, D/H)."""
    return rearrange(t, "b l (h d) -> b h l d", h=h)


def _merge(o):
    return rearrange(o, "b h l d -> b l (h d)")


def _linear_kernel(m, q, k, pos_q, pos_k, span):
    return (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)


def _favor_kernel(m, q, k, pos_q, pos_k, span):
    w = m.favor.projection
    def phi(t):
        t = t * t.shape[-1] ** -0.25
        return torch.exp(t @ w.T - t.pow(2).sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])
    return phi(q) @ phi(k).transpose(-2, -1)


def _cos_kernel(m, q, k, pos_q, pos_k, span):
    lag = pos_q[:, None, :, None] - pos_k[:, None, None, :]
    return (F.relu(q) @ F.relu(k).transpose(-2, -1)) * torch.cos(math.pi * lag / (2 * span[:, None, None, None]))


# name -> (kernel, how the denominator is guarded: + eps or clamped at eps)
METHODS = {"linear_attention": (_linear_kernel, "add"), "performer": (_favor_kernel, "clamp"),
           "cosformer": (_cos_kernel, "clamp")}


def _explicit(name, m, x, context=None, mask=None, context_mask=None):
    """The mixer's function with its own weights: A_ij = kernel(q_i, k_j) over valid keys (j <= i in causal self),
    o_i = sum_j A_ij v_j / (sum_j A_ij + eps) or / max(sum_j A_ij, eps); positions count valid tokens from 1."""
    kernel, denominator = METHODS[name]
    src = x if context is None else context
    q_valid = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
    k_valid = q_valid if context is None else (
        torch.ones(context.shape[:2], dtype=torch.bool) if context_mask is None else context_mask)
    pos_q, pos_k = q_valid.cumsum(1).to(F64), k_valid.cumsum(1).to(F64)
    span = getattr(m, "max_positions", None)
    span = (torch.maximum(q_valid.sum(1), k_valid.sum(1)).clamp(min=1).to(F64) if span is None
            else torch.full((x.shape[0],), float(span), dtype=F64))
    q, k, v = (_split(t, m.n_heads) for t in (x @ m.q_proj.weight.T, src @ m.k_proj.weight.T, src @ m.v_proj.weight.T))
    a = kernel(m, q, k, pos_q, pos_k, span) * k_valid[:, None, None, :]
    if m.pattern == Pattern.CAUSAL_SELF:
        a = a.tril()
    den = a.sum(-1, keepdim=True)
    o = (a @ v) / (den + EPS if denominator == "add" else den.clamp_min(EPS))
    y = _merge(o) @ m.out_proj.weight.T
    return y.masked_fill(~q_valid[..., None], 0.0)


def _build(name, pattern, **hypers):
    torch.manual_seed(0)
    base = {"n_heads": 2, "chunk_size": 4}
    if name == "performer":
        base["n_features"] = 12
    if name == "cosformer" and Pattern(pattern).is_causal:
        base["max_positions"] = 40
    return build(name, 16, pattern=pattern, **{**base, **hypers}).double().eval()


CASES = [(name, p.value) for name in METHODS for p in sorted(Pattern)]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("name", "pattern"), CASES)
def test_mixer_matches_explicit_quadratic_form(name, pattern, masked):
    m = _build(name, pattern)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 11, 16, generator=g, dtype=F64, requires_grad=True)
    ctx = torch.randn(2, 7, 16, generator=g, dtype=F64, requires_grad=True) if "cross" in pattern else None
    mask = ctx_mask = None
    if masked:
        mask = torch.ones(2, 11, dtype=torch.bool)
        mask[0, :3] = False
        mask[1, 4::3] = False
        if ctx is not None:
            ctx_mask = torch.ones(2, 7, dtype=torch.bool)
            ctx_mask[1, 5:] = False
    got = m(x, context=ctx, mask=mask, context_mask=ctx_mask)
    want = _explicit(name, m, x, ctx, mask, ctx_mask)
    inputs = [x, *([] if ctx is None else [ctx]), *m.parameters()]
    assert_same_function(got, want, inputs)


@pytest.mark.parametrize("name", list(METHODS))
def test_chunk_size_does_not_change_the_function(name):
    """One chunk, tokens one by one, and a partial last chunk all compute the causal form (forward and stream)."""
    x = torch.randn(2, 19, 16, dtype=F64, generator=torch.Generator().manual_seed(2))
    outputs = [_build(name, "causal_self", chunk_size=c)(x) for c in (1, 4, 7, 64)]
    for y in outputs[1:]:
        torch.testing.assert_close(y, outputs[0], atol=1e-13, rtol=1e-11)


@pytest.mark.parametrize("name", list(METHODS))
def test_causal_cross_is_noncausal_cross(name):
    """Each query reads the memory's state alone: the two cross patterns are one function (with a fixed M for
    cosFormer), and only the causal one streams."""
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 9, 16, generator=g, dtype=F64), torch.randn(2, 6, 16, generator=g, dtype=F64)
    fixed_span = {"max_positions": 40} if name == "cosformer" else {}
    causal, noncausal = _build(name, "causal_cross", **fixed_span), _build(name, "noncausal_cross", **fixed_span)
    noncausal.load_state_dict(causal.state_dict())
    torch.testing.assert_close(causal(x, context=ctx), noncausal(x, context=ctx), atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize("name", ["linear_attention", "performer"])
def test_noncausal_self_is_permutation_equivariant(name):
    """No positions in these kernels: permuting the tokens permutes the outputs."""
    m = _build(name, "noncausal_self")
    x = torch.randn(2, 10, 16, dtype=F64, generator=torch.Generator().manual_seed(6))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm], atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize(("name", "m_features"), [("linear_attention", 8), ("performer", 12), ("cosformer", 16)])
def test_state_holds_s_and_z_per_head(name, m_features):
    m = _build(name, "causal_self")
    state = m.init_state(2)
    _, state = m.forward_stream(torch.randn(2, 5, 16, dtype=F64), state)
    assert state.kv.shape == (2, 2, m_features, 8) and state.z.shape == (2, 2, m_features)
    assert m.state_size(5) == m.state_size(5000) == 2 * m_features * 9


# -- Performer ------------------------------------------------------------------------------------------------


def test_performer_eval_is_deterministic_and_training_redraws():
    m = _build("performer", "causal_self")
    x = torch.randn(2, 10, 16, dtype=F64)
    projection = m.favor.projection.clone()
    assert torch.equal(m(x), m(x)) and torch.equal(m.favor.projection, projection)
    m.train()
    first, second = m(x), m(x)
    assert not torch.allclose(first, second)  # a fresh projection per training forward
    assert not torch.equal(m.favor.projection, projection)
    fixed = _build("performer", "causal_self", redraw=False).train()
    assert torch.equal(fixed(x), fixed(x))


def test_performer_stream_in_training_uses_the_current_draw():
    """A stream never redraws: in train() it equals a forward that used the same projection."""
    m = _build("performer", "causal_self").train()
    x = torch.randn(2, 10, 16, dtype=F64)
    y = m(x)  # redraws, leaves its draw in the buffer
    state = m.init_state(2)
    y1, state = m.forward_stream(x[:, :4], state)
    y2, state = m.forward_stream(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, atol=1e-13, rtol=1e-11)


def test_performers_layers_draw_different_projections():
    torch.manual_seed(0)
    a, b = build("performer", 16, n_heads=2), build("performer", 16, n_heads=2)
    assert not torch.equal(a.favor.projection, b.favor.projection)
    assert build("performer", 64).n_features == round(64 * math.log(64))


@pytest.mark.parametrize("pattern", ["noncausal_self", "causal_self"])
def test_performer_approximates_softmax_attention(pattern):
    """E[phi(q) . phi(k)] = exp(q . k / sqrt(d_h)): with many features the mixer approaches softmax attention with
    the same weights (seeded; queries and keys of moderate norm, where FAVOR+'s variance is small), and with few it
    is visibly worse."""
    x = 0.5 * torch.randn(2, 24, 16, dtype=F64, generator=torch.Generator().manual_seed(1))

    def relative_error(n_features: int) -> float:
        m = _build("performer", pattern, n_features=n_features)
        o = softmax_attention_ref(_split(m.q_proj(x)), _split(m.k_proj(x)), _split(m.v_proj(x)),
                                  causal=pattern == "causal_self")
        exact = m.out_proj(_merge(o))
        return ((m(x) - exact).abs().max() / exact.abs().max()).item()

    many, few = relative_error(16384), relative_error(16)
    assert many < 0.03
    assert few > 3 * many


# -- cosFormer ----------------------------------------------------------------------------------------------------


def test_cosformer_patterns_depend_on_max_positions():
    assert build("cosformer", 16).pattern == Pattern.NONCAUSAL_SELF
    for pattern in ("causal_self", "causal_cross"):
        with pytest.raises(PatternNotSupported, match=f"{pattern}.*set max_positions"):
            build("cosformer", 16, pattern=pattern)
        assert build("cosformer", 16, pattern=pattern, max_positions=64).pattern == pattern


def test_cosformer_span_per_call_would_not_be_causal():
    """Why causal patterns need a fixed M: with M = the call's length, the weight of an early pair changes as the
    sequence grows, so the prefix form's outputs on a prefix differ from the same positions of the whole."""
    g = torch.Generator().manual_seed(4)
    q, k = (F.relu(torch.randn(1, 1, 12, 4, generator=g, dtype=F64)) for _ in range(2))
    v = torch.randn(1, 1, 12, 3, generator=g, dtype=F64)
    pos = torch.arange(1, 13)[None]

    def causal(n: int, span: float) -> torch.Tensor:
        qq, kk = cos_reweighted(q[:, :, :n], pos[:, :n], span), cos_reweighted(k[:, :, :n], pos[:, :n], span)
        return linear_attention_ref(qq, kk, v[:, :, :n], causal=True, denominator="clamp")

    assert not torch.allclose(causal(6, 6.0), causal(12, 12.0)[:, :, :6])
    torch.testing.assert_close(causal(6, 12.0), causal(12, 12.0)[:, :, :6], atol=1e-14, rtol=1e-12)


def test_cosformer_refuses_positions_beyond_max_positions():
    m = _build("cosformer", "causal_self", max_positions=8)
    with pytest.raises(TooManyPositions, match="max_positions=8"):
        m(torch.randn(1, 9, 16, dtype=F64))
    state = m.init_state(1)
    _, state = m.forward_stream(torch.randn(1, 8, 16, dtype=F64), state)
    with pytest.raises(SequenceTooLong, match="max_positions=8"):
        m.step(torch.randn(1, 16, dtype=F64), state)
    cross = _build("cosformer", "causal_cross", max_positions=8)
    with pytest.raises(TooManyPositions, match="a memory of 9 tokens"):
        cross.init_state(1, context=torch.randn(1, 9, 16, dtype=F64))
    noncausal = _build("cosformer", "noncausal_cross", max_positions=8)
    with pytest.raises(TooManyPositions, match="a memory of 9 tokens"):
        noncausal(torch.randn(1, 3, 16, dtype=F64), context=torch.randn(1, 9, 16, dtype=F64))


def test_cosformer_huge_span_is_relu_linear_attention():
    """Degenerate limit: as M grows the cos weights tend to 1, leaving linear attention with ReLU features."""
    m = _build("cosformer", "causal_self", max_positions=10**9)
    x = torch.randn(2, 13, 16, dtype=F64, generator=torch.Generator().manual_seed(5))
    o = linear_attention_chunked(F.relu(_split(m.q_proj(x))), F.relu(_split(m.k_proj(x))), _split(m.v_proj(x)), 13,
                                 denominator="clamp")
    torch.testing.assert_close(m(x), m.out_proj(_merge(o)), atol=1e-12, rtol=1e-10)


def test_cosformer_fixed_span_is_causal_and_per_call_span_is_not():
    noncausal = _build("cosformer", "noncausal_self")
    assert prefix_violation(noncausal) > 1e-6
    assert prefix_violation(_build("cosformer", "causal_self", max_positions=64)) < 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize(("name", "pattern"), CASES)
def test_cuda_matches_cpu(name, pattern):
    m = _build(name, pattern).float()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 40, 16, generator=g)
    ctx = torch.randn(2, 24, 16, generator=g) if "cross" in pattern else None
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, :5] = False
    want = m(x, context=ctx, mask=mask)
    got = m.cuda()(x.cuda(), context=None if ctx is None else ctx.cuda(), mask=mask.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
    if Pattern(pattern).is_causal:
        state = m.init_state(2, context=None if ctx is None else ctx.cuda())
        y, _ = m.forward_stream(x.cuda(), state, mask=mask.cuda())
        torch.testing.assert_close(y.cpu(), want, atol=1e-4, rtol=1e-4)
