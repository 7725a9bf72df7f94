"""Normalised linear attention: the chunked causal form and the recurrence against the explicit quadratic form
(outputs, final states and gradients w.r.t. every input, float64) for chunk sizes 1, 7, 64 and > L, with masks,
initial states and both denominators; the non-causal form, the memory state and its readout; continuation of a
sequence through its state; a masked key as an exact no-op; the prefix mean as a degenerate limit; empty rows;
precision; refusals."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.linear_attention import (
    linear_attention,
    linear_attention_chunked,
    linear_attention_readout,
    linear_attention_recurrent,
    linear_attention_ref,
    linear_attention_state,
    linear_attention_update,
)
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
BATCH, H, M, DV, L = 2, 3, 4, 5, 40


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.to(F64).requires_grad_()


def _inputs(lq: int = L, lk: int = L, seed: int = 0, with_state: bool = False, masked: bool = False):
    """Positive features (as every feature map here gives: elu+1, FAVOR+, ReLU) in [0.1, 1.1], named leaves and the
    keyword arguments. The mask has padding at the left of row 0 and holes in row 1."""
    g = torch.Generator().manual_seed(seed)
    named = {
        "phi_q": _leaf(0.1 + torch.rand(BATCH, H, lq, M, generator=g, dtype=F64)),
        "phi_k": _leaf(0.1 + torch.rand(BATCH, H, lk, M, generator=g, dtype=F64)),
        "v": _leaf(torch.randn(BATCH, H, lk, DV, generator=g, dtype=F64)),
    }
    kwargs: dict = {}
    if with_state:
        named["S0"] = _leaf(torch.randn(BATCH, H, M, DV, generator=g, dtype=F64))
        named["z0"] = _leaf(1 + torch.rand(BATCH, H, M, generator=g, dtype=F64))
        kwargs["initial_state"] = (named["S0"], named["z0"])
    if masked:
        valid = torch.ones(BATCH, lk, dtype=torch.bool)
        valid[0, : lk // 4] = False
        valid[1, 3::5] = False
        kwargs["k_valid"] = valid
    return named, kwargs


def _args(named):
    return named["phi_q"], named["phi_k"], named["v"]


def _check(got, want, named):
    assert_same_function(got, want, list(named.values()), names=list(named))


@pytest.mark.parametrize("denominator", ["add", "clamp"])
@pytest.mark.parametrize(("with_state", "masked"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("chunk", [1, 7, 64, L])
def test_chunked_matches_quadratic_form(chunk, with_state, masked, denominator):
    """L = 40: chunk 7 leaves a partial last chunk, 64 is longer than the sequence, L is one chunk."""
    named, kwargs = _inputs(seed=chunk, with_state=with_state, masked=masked)
    got = linear_attention_chunked(*_args(named), chunk, **kwargs, return_final_state=True, denominator=denominator)
    want = linear_attention_ref(*_args(named), causal=True, **kwargs, return_final_state=True,
                                denominator=denominator)
    _check((got[0], *got[1]), (want[0], *want[1]), named)


@pytest.mark.parametrize(("with_state", "masked"), [(False, False), (True, True)])
def test_recurrent_matches_quadratic_form(with_state, masked):
    named, kwargs = _inputs(seed=3, with_state=with_state, masked=masked)
    got = linear_attention_recurrent(*_args(named), **kwargs, return_final_state=True)
    want = linear_attention_ref(*_args(named), causal=True, **kwargs, return_final_state=True)
    _check((got[0], *got[1]), (want[0], *want[1]), named)


@pytest.mark.parametrize(("length", "chunk"), [(1, 4), (5, 5), (17, 4), (33, 16)])
def test_chunked_matches_recurrent_other_lengths(length, chunk):
    named, kwargs = _inputs(length, length, seed=length, with_state=True, masked=True)
    got = linear_attention_chunked(*_args(named), chunk, **kwargs, return_final_state=True)
    want = linear_attention_recurrent(*_args(named), **kwargs, return_final_state=True)
    _check((got[0], *got[1]), (want[0], *want[1]), named)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("lq", "lk"), [(L, L), (9, 23)])
def test_noncausal_matches_quadratic_form(lq, lk, masked):
    named, kwargs = _inputs(lq, lk, seed=lq + lk, masked=masked)
    _check(linear_attention(*_args(named), **kwargs), linear_attention_ref(*_args(named), **kwargs), named)


def test_memory_state_and_readout_are_the_noncausal_form():
    """The state of a memory is the quadratic form's final state from zero; reading it is the non-causal form."""
    named, kwargs = _inputs(9, 23, seed=4, masked=True)
    phi_q, phi_k, v = _args(named)
    _, want_state = linear_attention_ref(phi_q, phi_k, v, **kwargs, return_final_state=True)
    _check(linear_attention_state(phi_k, v, **kwargs), want_state, named)
    got = linear_attention_readout(phi_q, linear_attention_state(phi_k, v, **kwargs))
    _check(got, linear_attention(phi_q, phi_k, v, **kwargs), named)


@pytest.mark.parametrize("split", [1, 13, 39])
def test_state_continues_a_sequence(split):
    """Two calls carrying the state equal one call (streaming), chunks straddling the split included."""
    named, kwargs = _inputs(seed=5, masked=True)
    phi_q, phi_k, v = _args(named)
    valid = kwargs["k_valid"]
    y1, s1 = linear_attention_chunked(phi_q[:, :, :split], phi_k[:, :, :split], v[:, :, :split], 8,
                                      k_valid=valid[:, :split], return_final_state=True)
    y2, s2 = linear_attention_chunked(phi_q[:, :, split:], phi_k[:, :, split:], v[:, :, split:], 8,
                                      k_valid=valid[:, split:], initial_state=s1, return_final_state=True)
    y, s = linear_attention_chunked(phi_q, phi_k, v, 8, k_valid=valid, return_final_state=True)
    _check((torch.cat([y1, y2], dim=2), *s2), (y, *s), named)


def test_update_is_one_step_and_a_masked_token_is_an_exact_no_op():
    named, _ = _inputs(1, 1, seed=6, with_state=True)
    phi_q, phi_k, v = (t[:, :, 0] for t in _args(named))
    state = (named["S0"], named["z0"])
    o, new = linear_attention_update(state, phi_q, phi_k, v)
    o_ref, new_ref = linear_attention_ref(*_args(named), causal=True, initial_state=state, return_final_state=True)
    _check((o, *new), (o_ref[:, :, 0], *new_ref), named)
    valid = torch.tensor([False, True])
    _, masked = linear_attention_update(state, phi_q, phi_k, v, k_valid=valid)
    assert torch.equal(masked[0][0], state[0][0]) and torch.equal(masked[1][0], state[1][0])  # bit-identical
    assert torch.equal(masked[0][1], new[0][1]) and torch.equal(masked[1][1], new[1][1])


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_masked_keys_are_removed_exactly(chunk):
    """Each row equals its valid keys alone (queries at valid positions); masked keys get zero gradient."""
    named, kwargs = _inputs(seed=7, masked=True)
    phi_q, phi_k, v = _args(named)
    valid = kwargs["k_valid"]
    y, (s, z) = linear_attention_chunked(phi_q, phi_k, v, chunk, k_valid=valid, return_final_state=True)
    for b in range(BATCH):
        keep = valid[b]
        ya, (sa, za) = linear_attention_chunked(phi_q[b:b + 1, :, keep], phi_k[b:b + 1, :, keep],
                                                v[b:b + 1, :, keep], chunk, return_final_state=True)
        torch.testing.assert_close(y[b:b + 1, :, keep], ya, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close((s[b:b + 1], z[b:b + 1]), (sa, za), atol=1e-12, rtol=1e-10)
    grads = torch.autograd.grad((y * torch.randn_like(y)).sum() + s.sum() + z.sum(), [phi_k, v])
    for grad in grads:
        assert grad.permute(0, 2, 1, 3)[~valid].abs().max() == 0


def test_constant_features_give_the_prefix_mean():
    """Degenerate limit: phi = 1 makes every key weigh the same: o_i = sum_{j<=i} v_j / (i + 1 + eps)."""
    v = torch.randn(1, 1, 12, 3, dtype=F64)
    ones = torch.ones(1, 1, 12, 1, dtype=F64)
    want = v.cumsum(dim=2) / (torch.arange(1, 13, dtype=F64)[:, None] + 1e-6)
    torch.testing.assert_close(linear_attention_chunked(ones, ones, v, 5), want, atol=1e-14, rtol=1e-12)


def test_clamped_denominator_cancels_a_per_query_factor():
    """Why FAVOR+ uses "clamp": above eps, scaling a query's features by any positive factor changes nothing."""
    named, _ = _inputs(seed=8)
    phi_q, phi_k, v = (t.detach() for t in _args(named))
    factor = torch.rand(BATCH, H, L, 1, dtype=F64) + 0.5
    for denominator, same in (("clamp", True), ("add", False)):
        a = linear_attention_chunked(phi_q, phi_k, v, 7, denominator=denominator, eps=1e-3)
        b = linear_attention_chunked(phi_q * factor, phi_k, v, 7, denominator=denominator, eps=1e-3)
        assert torch.allclose(a, b, atol=1e-13, rtol=0) == same


@pytest.mark.parametrize("denominator", ["add", "clamp"])
def test_no_valid_key_gives_finite_zeros(denominator):
    """A row whose keys are all masked (or whose ReLU features are all 0) outputs 0, with finite gradients."""
    named, _ = _inputs(seed=9)
    phi_q, phi_k, v = _args(named)
    valid = torch.ones(BATCH, L, dtype=torch.bool)
    valid[1] = False
    for y in (linear_attention_chunked(phi_q, phi_k, v, 7, k_valid=valid, denominator=denominator),
              linear_attention(phi_q, phi_k, v, k_valid=valid, denominator=denominator),
              linear_attention_chunked(phi_q, torch.zeros_like(phi_k), v, 7, denominator=denominator)):
        assert (y[1] == 0).all()
        grads = torch.autograd.grad(y.sum(), [phi_q, phi_k, v], allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_float32(dtype):
    named, _ = _inputs(seed=10)
    phi_q, phi_k, v = (t.detach().to(dtype) for t in _args(named))
    y, (s, z) = linear_attention_chunked(phi_q, phi_k, v, 8, return_final_state=True)
    assert y.dtype == dtype and s.dtype == torch.float32 and z.dtype == torch.float32
    y_ref, (s_ref, _) = linear_attention_ref(phi_q.double(), phi_k.double(), v.double(), causal=True,
                                             return_final_state=True)
    torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(y.double(), y_ref, atol=2e-2, rtol=2e-2)
    o, (s1, _) = linear_attention_update((s, z), phi_q[:, :, 0], phi_k[:, :, 0], v[:, :, 0])
    assert o.dtype == dtype and s1.dtype == torch.float32


def test_float32_long_sequence_stays_accurate():
    g = torch.Generator().manual_seed(11)
    phi_q, phi_k = (0.1 + torch.rand(1, 2, 4096, 8, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(1, 2, 4096, 8, generator=g, dtype=F64)
    want = linear_attention_chunked(phi_q, phi_k, v, 64)
    got = linear_attention_chunked(phi_q.float(), phi_k.float(), v.float(), 64)
    assert ((got.double() - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize(("call", "words"), [
    (lambda q, k, v: linear_attention_chunked(q, k, v, 0), ["chunk_size=0", "int >= 1"]),
    (lambda q, k, v: linear_attention_chunked(q, k[:, :, :5], v[:, :, :5], 4), ["as many queries as keys"]),
    (lambda q, k, v: linear_attention(q, k[..., :2], v), ["phi_k must have shape", "(2, 3, Lk, 4)"]),
    (lambda q, k, v: linear_attention(q, k, v[:, :, :3]), ["v must have shape"]),
    (lambda q, k, v: linear_attention(q, k, v, k_valid=torch.ones(2, 7, dtype=torch.bool)), ["k_valid", "(2, 40)"]),
    (lambda q, k, v: linear_attention(q, k, v, denominator="max"), ["denominator='max'", "'add', 'clamp'"]),
    (lambda q, k, v: linear_attention(q, k, v, eps=0.0), ["eps=0.0", "> 0"]),
    (lambda q, k, v: linear_attention_chunked(q, k, v, 4, initial_state=(torch.zeros(2, 3, 4, 4),
                                                                         torch.zeros(2, 3, 4))),
     ["the state (S, z)", "(2, 3, 4, 5)"]),
    (lambda q, k, v: linear_attention_update((torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4)), q[:, :, 0],
                                             k[:, :, 0], v[:, :, 0], k_valid=torch.ones(3, dtype=torch.bool)),
     ["k_valid must be a bool tensor of shape (B,)"]),
])
def test_refusals_name_the_argument(call, words):
    named, _ = _inputs()
    with pytest.raises(ValueError) as info:
        call(*(t.detach() for t in _args(named)))
    for word in words:
        assert word in str(info.value)
