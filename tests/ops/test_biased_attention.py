"""Biased attention (MEGA's softmax, laplace and relu² kernels with an additive bias): the fast dense form and the
chunked form against their one-query-at-a-time oracles, outputs and gradients (bias included), float64; rows
that see no key give exactly 0 with finite gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from longseq.ops.attention import block_local_attention
from longseq.ops.biased_attention import (
    KERNELS,
    biased_attention,
    biased_attention_ref,
    block_biased_attention,
    block_biased_attention_ref,
    laplace,
    relu2,
)
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _leaves(*shapes, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=F64, requires_grad=True) for s in shapes]


def _visible(b: int, lq: int, lk: int, seed: int = 1):
    """Random visibility with a row of queries that sees no key at all."""
    g = torch.Generator().manual_seed(seed)
    visible = torch.rand(b, 1, lq, lk, generator=g) < 0.6
    visible[0, 0, 0] = False
    return visible


@pytest.mark.parametrize(("kernel", "with_bias", "shape"), list(itertools.product(
    KERNELS, [False, True], [(6, 6), (1, 7), (5, 3)])))
def test_biased_attention_matches_reference(kernel, with_bias, shape):
    lq, lk = shape
    q, k, v, bias = _leaves((2, 3, lq, 4), (2, 3, lk, 4), (2, 3, lk, 5), (2, 1, lq, lk))
    visible = _visible(2, lq, lk)
    kw = {"bias": bias if with_bias else None, "kernel": kernel}
    got = biased_attention(q, k, v, visible, **kw)
    want = biased_attention_ref(q, k, v, visible, **kw)
    assert_same_function(got, want, [q, k, v, bias], names=["q", "k", "v", "bias"])
    assert got[0, :, 0].abs().max() == 0  # the query with no visible key


@pytest.mark.parametrize("kernel", KERNELS)
def test_broadcast_visibility_and_an_explicit_scale(kernel):
    """visible (B, 1, 1, Lk) (key padding only) and a bias shared by the batch; scale given."""
    q, k, v, bias = _leaves((2, 2, 5, 4), (2, 2, 6, 4), (2, 2, 6, 3), (5, 6), seed=3)
    visible = torch.tensor([[1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    got = biased_attention(q, k, v, visible, bias=bias, kernel=kernel, scale=0.3)
    want = biased_attention_ref(q, k, v, visible, bias=bias, kernel=kernel, scale=0.3)
    assert_same_function(got, want, [q, k, v, bias])
    assert got[1].abs().max() == 0


def test_rows_without_keys_are_zero_with_finite_gradients():
    q, k, v, bias = _leaves((1, 1, 3, 4), (1, 1, 3, 4), (1, 1, 3, 4), (3, 3))
    for kernel in KERNELS:
        out = biased_attention(q, k, v, torch.zeros(1, 1, 3, 3, dtype=torch.bool), bias=bias, kernel=kernel)
        assert out.abs().max() == 0
        grads = torch.autograd.grad(out.sum(), [q, k, v, bias])
        assert all(torch.isfinite(g).all() and g.abs().max() == 0 for g in grads)


def test_kernels_as_in_mega():
    """laplace(μ) = 1/2 and it matches relu² in value at x = sqrt 2 (MEGA's choice of μ, σ); the softmax default
    scale is d^-1/2, the element-wise kernels' is 1 with the 1/n normaliser."""
    assert laplace(torch.tensor(math.sqrt(0.5), dtype=F64)).item() == pytest.approx(0.5)
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=F64)
    assert torch.equal(relu2(x), torch.tensor([0.0, 0.0, 4.0], dtype=F64))
    q, k, v = (torch.ones(1, 2, 4, dtype=F64) for _ in range(3))
    visible = torch.ones(1, 2, 2, dtype=torch.bool)
    out = biased_attention(q, k, v, visible, kernel="relu2")
    torch.testing.assert_close(out, torch.full((1, 2, 4), 2 * (4 / 2) ** 2, dtype=F64))


@pytest.mark.parametrize(("kernel", "causal", "masked", "chunk"), list(itertools.product(
    KERNELS, [True, False], [False, True], [1, 3, 5, 13, 20])))
def test_block_biased_attention_matches_reference(kernel, causal, masked, chunk):
    length = 13
    q, k, v, bias = _leaves((3, 2, length, 4), (3, 2, length, 4), (3, 2, length, 3), (chunk, chunk), seed=chunk)
    valid = None
    if masked:  # row 0 left padding and holes, row 1 right padding, row 2 no valid token
        valid = torch.ones(3, length, dtype=torch.bool)
        valid[0, :2] = valid[0, 5:7] = False
        valid[1, -4:] = False
        valid[2] = False
    kw = {"chunk": chunk, "causal": causal, "valid": valid, "bias": bias, "kernel": kernel}
    got = block_biased_attention(q, k, v, **kw)
    assert_same_function(got, block_biased_attention_ref(q, k, v, **kw), [q, k, v, bias],
                         names=["q", "k", "v", "bias"])
    if masked:
        assert got[:, :, ~valid[0]][0].abs().max() == 0 and got[2].abs().max() == 0


@pytest.mark.parametrize("causal", [True, False])
def test_block_softmax_without_bias_is_block_local_attention(causal):
    q, k, v = (t.detach() for t in _leaves((2, 2, 11, 4), (2, 2, 11, 4), (2, 2, 11, 4)))
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[1, 3:5] = False
    got = block_biased_attention(q, k, v, chunk=4, causal=causal, valid=valid)
    torch.testing.assert_close(got, block_local_attention(q, k, v, chunk=4, causal=causal, valid=valid))


def test_half_precision_keeps_the_dtype_and_stays_close():
    q, k, v = (t.detach() for t in _leaves((2, 1, 20, 8), (2, 1, 20, 8), (2, 1, 20, 8)))
    bias = torch.randn(5, 5, dtype=F64)
    for kernel in KERNELS:
        want = block_biased_attention(q, k, v, chunk=5, bias=bias, kernel=kernel)
        got = block_biased_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), chunk=5, bias=bias.bfloat16(),
                                     kernel=kernel)
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, atol=5e-2, rtol=5e-2)


def test_refusals():
    q = torch.zeros(1, 1, 3, 2)
    visible = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    for fn in (biased_attention, biased_attention_ref):
        with pytest.raises(ValueError, match="kernel='relu' is not allowed; allowed: softmax, laplace, relu2"):
            fn(q, q, q, visible, kernel="relu")
    for fn in (block_biased_attention, block_biased_attention_ref):
        with pytest.raises(ValueError, match="chunk=0 must be a positive integer"):
            fn(q, q, q, chunk=0)
        with pytest.raises(ValueError, match=r"bias must have shape \(chunk, chunk\) = \(2, 2\), got \(3, 3\)"):
            fn(q, q, q, chunk=2, bias=torch.zeros(3, 3))
