"""ABC against its function written out with its own weights (explicit softmax over each prefix, or over the whole
sequence / memory), in all four patterns with and without masks; the degenerate limit where every slot holds one
token (= softmax attention); the bounded state; refusals and hypers."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from longseq.mixers import InvalidHyper, build
from longseq.ops.attention import softmax_attention_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _explicit_abc(m, x, context=None, mask=None, context_mask=None):
    """Per row and head: slots by an explicit softmax over the visible valid tokens, then softmax over slots."""
    h, dh = m.n_heads, m.head_dim
    src = x if context is None else context
    src_valid = mask if context is None else context_mask

    def heads(t):
        return rearrange(t, "b l (h d) -> b h l d", h=h)

    q, k, v = heads(x @ m.q_proj.weight.T), heads(src @ m.k_proj.weight.T), heads(src @ m.v_proj.weight.T)
    causal_self = m.pattern.value == "causal_self"
    out = torch.zeros_like(q)
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            if mask is not None and not mask[b, i]:
                continue
            last = i if causal_self else src.shape[1] - 1
            keys = [j for j in range(last + 1) if src_valid is None or src_valid[b, j]]
            if not keys:
                continue
            for hh in range(h):
                kk, vv = k[b, hh, keys], v[b, hh, keys]  # (n, dh)
                slot_k = torch.softmax(kk @ m.slot_k_weight[hh], dim=0).T @ kk  # (m, dh)
                slot_v = torch.softmax(vv @ m.slot_v_weight[hh], dim=0).T @ vv
                p = torch.softmax(q[b, hh, i] @ slot_k.T / dh ** 0.5, dim=0)
                out[b, hh, i] = p @ slot_v
    return rearrange(out, "b h l d -> b l (h d)") @ m.out_proj.weight.T


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self", "causal_cross", "noncausal_cross"])
@pytest.mark.parametrize("masked", [False, True])
def test_mixer_matches_explicit_computation(pattern, masked):
    torch.manual_seed(0)
    m = build("abc", 8, pattern=pattern, n_heads=2, n_slots=3, chunk_size=4).double()
    x = torch.randn(2, 9, 8, dtype=F64, requires_grad=True)
    ctx = torch.randn(2, 7, 8, dtype=F64) if "cross" in pattern else None
    mask = ctx_mask = None
    if masked:
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[0, :3] = False
        mask[1, 4:6] = False
        if ctx is not None:
            ctx_mask = torch.ones(2, 7, dtype=torch.bool)
            ctx_mask[1, 5:] = False
    got = m(x, context=ctx, mask=mask, context_mask=ctx_mask)
    want = _explicit_abc(m, x, ctx, mask, ctx_mask)
    assert_same_function(got, want, [x, *m.parameters()])


def test_causal_slots_cover_the_whole_prefix():
    """The true prefix softmax: an early token's key still shapes a late output (CAB's causal branch, which weights
    only the current token, would make output t independent of the keys of tokens before t)."""
    torch.manual_seed(1)
    m = build("abc", 8, n_heads=1, n_slots=2).double()
    x = torch.randn(1, 12, 8, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(m(x)[0, -1].sum(), x)
    assert grad[0, 0].abs().max() > 1e-6


def test_one_slot_per_token_is_softmax_attention():
    """Degenerate limit: L = m tokens x_j = c e_j with identity key/value projections and slot weights: slot j's
    softmax over positions picks token j (up to e^-c), so K~ = K, V~ = V and ABC is softmax attention."""
    torch.manual_seed(2)
    length = 8
    m = build("abc", length, pattern="noncausal_self", n_heads=1, n_slots=length).double()
    with torch.no_grad():
        for w in (m.k_proj.weight, m.v_proj.weight, m.out_proj.weight):
            w.copy_(torch.eye(length, dtype=F64))
        m.slot_k_weight.copy_(torch.eye(length, dtype=F64)[None])
        m.slot_v_weight.copy_(torch.eye(length, dtype=F64)[None])
        m.q_proj.weight.mul_(0.05)
    x = 40.0 * torch.eye(length, dtype=F64)[None]
    q = (x @ m.q_proj.weight.T)[:, None]
    want = softmax_attention_ref(q, x[:, None], x[:, None])[:, 0]
    torch.testing.assert_close(m(x), want, atol=1e-10, rtol=0)


def test_state_is_bounded_and_matches_the_formula():
    m = build("abc", 32, n_heads=4, n_slots=5).double()
    state = m.init_state(2)
    sizes = []
    for n in (1, 50, 200):
        _, state = m.forward_stream(torch.randn(2, n, 32, dtype=F64), state)
        sizes.append(state.num_floats())
    assert sizes[0] == sizes[-1] == m.state_size(251) == 2 * 5 * (32 + 2 * 4)


def test_causal_and_noncausal_cross_agree():
    torch.manual_seed(3)
    a = build("abc", 8, pattern="causal_cross", n_heads=2, n_slots=3).double()
    b = build("abc", 8, pattern="noncausal_cross", n_heads=2, n_slots=3).double()
    b.load_state_dict(a.state_dict())
    x, ctx = torch.randn(2, 6, 8, dtype=F64), torch.randn(2, 5, 8, dtype=F64)
    torch.testing.assert_close(a(x, context=ctx), b(x, context=ctx), atol=0, rtol=0)


def test_chunk_size_does_not_change_the_function():
    torch.manual_seed(4)
    a = build("abc", 8, n_heads=2, n_slots=3, chunk_size=1).double()
    b = build("abc", 8, n_heads=2, n_slots=3, chunk_size=64).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 20, 8, dtype=F64)
    torch.testing.assert_close(a(x), b(x), atol=1e-13, rtol=0)


def test_bfloat16_keeps_a_float32_state():
    m = build("abc", 16, n_heads=2, n_slots=4).to(torch.bfloat16)
    state = m.init_state(2)
    y, state = m.forward_stream(torch.randn(2, 5, 16, dtype=torch.bfloat16), state)
    assert y.dtype == torch.bfloat16 and state.k_num.dtype == torch.float32


def test_invalid_hypers_are_refused():
    with pytest.raises(InvalidHyper, match="n_slots"):
        build("abc", 16, n_slots=0)
    with pytest.raises(InvalidHyper, match="not divisible by n_heads=3"):
        build("abc", 16, n_heads=3)
