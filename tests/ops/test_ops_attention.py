"""Softmax attention ops: both fast impls against the one-query-at-a-time oracle, outputs and gradients (float64)."""

from __future__ import annotations

import itertools

import pytest
import torch

from longseq.ops.attention import softmax_attention, softmax_attention_ref
from longseq.testing.oracle import assert_same_function


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
    want = softmax_attention_ref(q, k, v, causal=causal, q_valid=q_valid, k_valid=k_valid)
    got = softmax_attention(q, k, v, causal=causal, q_valid=q_valid, k_valid=k_valid, impl=impl)
    assert_same_function(got, want, [q, k, v], names=["q", "k", "v"])


def test_reference_zeroes_rows_without_keys():
    q, k, v = _qkv(4, 4)
    k_valid = torch.zeros(2, 4, dtype=torch.bool)
    out = softmax_attention_ref(q, k, v, k_valid=k_valid)
    assert out.abs().max() == 0
    assert softmax_attention(q, k, v, k_valid=k_valid, impl="math").abs().max() == 0


def test_sdpa_causal_without_padding_takes_the_fused_path(monkeypatch):
    """No L x L mask may be built for the common case: SDPA's is_causal kernels are several times faster."""
    import longseq.ops.attention as ops

    def no_mask(*args, **kwargs):
        raise AssertionError("attention_mask was built")

    monkeypatch.setattr(ops, "attention_mask", no_mask)
    q, k, v = _qkv(9, 9)
    ops.softmax_attention(q, k, v, causal=True, impl="sdpa")
