"""ABC's softmax pooling and slot attention: the chunked causal slot attention (also one token at a time) against
the explicit per-prefix softmax and per-query slot softmax (outputs, final states and gradients, initial states
included); the reference against plain torch.softmax; the whole-sequence pool against the last prefix; masks as
exact no-ops; empty prefixes; log-space safety in float32; half precision."""

from __future__ import annotations

import math

import pytest
import torch

from longseq.ops.prefix_softmax import (
    SoftmaxPoolState,
    empty_pool_state,
    pool_read,
    prefix_slot_attention,
    prefix_slot_attention_ref,
    prefix_softmax_pool_ref,
    slot_attention,
    softmax_pool,
)
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _inputs(b=2, h=2, length=11, m=3, d=4, seed=0):
    """q, k, v, alpha_k, alpha_v."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, length, d, generator=g, dtype=F64) for _ in range(3))
    alpha_k, alpha_v = (2 * torch.randn(b, h, length, m, generator=g, dtype=F64) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, v, alpha_k, alpha_v)]


def _valid(b=2, length=11):
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[0, :3] = False  # row 0 starts with an empty prefix
    valid[1, 4:6] = False  # a hole
    return valid


def _state(b=2, h=2, m=3, d=4, seed=1):
    """A state after some earlier tokens (one slot of row 1 has seen nothing yet)."""
    g = torch.Generator().manual_seed(seed)
    den = torch.rand(b, h, m, generator=g, dtype=F64) + 0.5
    top = torch.randn(b, h, m, generator=g, dtype=F64)
    den[1, :, 0], top[1, :, 0] = 0.0, -math.inf
    num = torch.randn(b, h, m, d, generator=g, dtype=F64) * den[..., None]
    num[1, :, 0] = 0.0
    return SoftmaxPoolState(num.requires_grad_(), den.requires_grad_(), top)


def _flat(result):
    o, ks, vs = result
    return o, ks.num, ks.den, vs.num, vs.den


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_reference(chunk_size, masked, with_state):
    inputs = _inputs()
    valid = _valid()[:, None] if masked else None
    states = (_state(seed=1), _state(seed=2)) if with_state else (None, None)
    got = prefix_slot_attention(*inputs, valid, *states, chunk_size=chunk_size)
    want = prefix_slot_attention_ref(*inputs, valid, *states)
    leaves = inputs + ([t for s in states for t in (s.num, s.den)] if with_state else [])
    assert_same_function(_flat(got), _flat(want), leaves)
    for g, w in ((got[1], want[1]), (got[2], want[2])):
        torch.testing.assert_close(g.max, w.max, atol=0, rtol=0)


def test_token_by_token_matches_reference():
    """Decoding: one token per call, the states carried, is the recurrence of the module docstring."""
    inputs = _inputs()
    valid = _valid()
    k_state = v_state = None
    outputs = []
    for t in range(11):
        o, k_state, v_state = prefix_slot_attention(*(x[:, :, t:t + 1] for x in inputs), valid[:, None, t:t + 1],
                                                    k_state, v_state)
        outputs.append(o)
    want = prefix_slot_attention_ref(*inputs, valid[:, None])
    assert_same_function(_flat((torch.cat(outputs, dim=2), k_state, v_state)), _flat(want), inputs)


def test_reference_is_the_softmax_over_each_prefix():
    _, k, _, alpha, _ = _inputs(b=1, h=1)
    got, _ = prefix_softmax_pool_ref(alpha, k)
    for t in range(alpha.shape[2]):
        w = torch.softmax(alpha[0, 0, : t + 1], dim=0)  # (t+1, m)
        torch.testing.assert_close(got[0, 0, t], w.T @ k[0, 0, : t + 1], atol=1e-13, rtol=0)


def test_whole_sequence_pool_is_the_last_prefix():
    _, k, _, alpha, _ = _inputs()
    valid = _valid()[:, None]
    prefix, state = prefix_softmax_pool_ref(alpha, k, valid)
    assert_same_function(softmax_pool(alpha, k, valid), prefix[:, :, -1], [alpha, k])
    torch.testing.assert_close(pool_read(state.num, state.den), prefix[:, :, -1], atol=0, rtol=0)


def test_masked_positions_are_exact_no_ops_and_empty_prefixes_output_zero():
    q, k, v, alpha_k, alpha_v = (t.detach() for t in _inputs())
    valid = _valid()
    pad = ~valid[:, None, :, None]
    garbage = [q, k.masked_fill(pad, float("nan")), v.masked_fill(pad, float("nan")), alpha_k.masked_fill(pad, 1e4),
               alpha_v.masked_fill(pad, -1e4)]
    garbage = [t.clone().requires_grad_() for t in garbage]
    o, k_state, v_state = prefix_slot_attention(*garbage, valid[:, None], chunk_size=4)
    assert torch.isfinite(o).all()
    assert o[0, :, :3].abs().max() == 0  # row 0: nothing valid yet
    # Row 1 alone, without its hole: the same outputs at its valid positions and the same final states.
    keep = valid[1]
    o1, k1, v1 = prefix_slot_attention(*(t[1:, :, keep] for t in (q, k, v, alpha_k, alpha_v)), chunk_size=4)
    torch.testing.assert_close(o[1:, :, keep], o1, atol=1e-13, rtol=0)
    for got, want in zip((*k_state, *v_state), (*k1, *v1), strict=True):
        torch.testing.assert_close(got[1:], want, atol=1e-13, rtol=0)
    grads = torch.autograd.grad((o * torch.randn_like(o)).sum(), garbage[1:])
    for g in grads:
        assert torch.isfinite(g).all() and g[pad.expand(-1, 2, -1, g.shape[-1])].abs().max() == 0
    empty = prefix_slot_attention(*(t[..., :3, :] for t in (q, k, v, alpha_k, alpha_v)), valid[:, None, :3] & False)
    assert torch.isinf(empty[1].max).all() and empty[0].abs().max() == 0


def test_float32_is_log_space_safe():
    """Scores spanning far more than float32's exponent range (exp(±300)) within one chunk: every position keeps
    its own running max, so nothing overflows or underflows to 0/0."""
    q, k, v, _, _ = (t.detach() for t in _inputs(b=1, h=1, length=40))
    ramp = torch.linspace(-300, 300, 40, dtype=F64)[None, None, :, None]
    alpha_k, alpha_v = ramp.repeat(1, 1, 1, 3), -ramp.repeat(1, 1, 1, 3)
    want = prefix_slot_attention_ref(q, k, v, alpha_k, alpha_v)[0]
    got = prefix_slot_attention(*(t.float() for t in (q, k, v, alpha_k, alpha_v)), chunk_size=64)[0]
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computes_in_float32(dtype):
    inputs = [t.detach().to(dtype) for t in _inputs()]
    o, k_state, _ = prefix_slot_attention(*inputs, chunk_size=4)
    assert o.dtype == k_state.num.dtype == torch.float32
    want = prefix_slot_attention_ref(*(t.double() for t in inputs))[0]
    torch.testing.assert_close(o.double(), want, atol=1e-5, rtol=1e-5)


def test_slot_attention_is_a_softmax_over_slots():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 5, 4, generator=g, dtype=F64)
    sk, sv = (torch.randn(2, 3, 4, generator=g, dtype=F64) for _ in range(2))
    want = torch.softmax(q @ sk.transpose(1, 2) / 2, dim=-1) @ sv
    torch.testing.assert_close(slot_attention(q, sk, sv), want, atol=1e-14, rtol=0)
    assert slot_attention(q, torch.zeros_like(sk), torch.zeros_like(sv)).abs().max() == 0


def test_refusals_name_the_argument():
    q, k, v, alpha_k, alpha_v = _inputs()
    with pytest.raises(ValueError, match="chunk_size=0"):
        prefix_slot_attention(q, k, v, alpha_k, alpha_v, chunk_size=0)
    with pytest.raises(ValueError, match="share their leading dims"):
        prefix_slot_attention(q, k, v, alpha_k[:, :, :5], alpha_v)
    with pytest.raises(ValueError, match="the state's num must have shape"):
        prefix_slot_attention(q, k, v, alpha_k, alpha_v, None, empty_pool_state((2, 2), 3, 5, dtype=F64))
