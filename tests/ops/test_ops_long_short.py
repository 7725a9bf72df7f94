"""Transformer-LS ops: the blocked window + compressed-key attention (both patterns) and the chunk compression against
their one-query-at-a-time / one-chunk-at-a-time oracles, outputs and gradients (float64); the degenerate limits."""

from __future__ import annotations

import itertools

import pytest
import torch

from longseq.ops.attention import softmax_attention_ref
from longseq.ops.long_short import (
    causal_long_short_attention,
    causal_long_short_attention_ref,
    chunk_compress,
    chunk_compress_ref,
    gather_span,
    long_short_attention,
    long_short_attention_ref,
    masked_softmax,
)
from longseq.testing.oracle import assert_same_function


def _randn(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)


def _valid(b: int, n: int, seed: int) -> torch.Tensor:
    """Random holes, one row with its first third padded; row 0 of a batch of 3 has no valid key at all."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(b, n, generator=g) > 0.3
    valid[-1, : n // 3] = False
    if b >= 3:
        valid[0] = False
    return valid


@pytest.mark.parametrize(("chunk", "masked", "length"), list(itertools.product([1, 3, 4, 100], [False, True],
                                                                               [1, 8, 11])))
def test_chunk_compress_matches_reference(chunk, masked, length):
    logits, x = _randn(3, 2, length, 2, seed=length), _randn(3, 2, length, 5, seed=length + 1)
    valid = _valid(3, length, seed=chunk) if masked else None
    want = chunk_compress_ref(logits, x, valid, chunk)
    assert_same_function(chunk_compress(logits, x, valid, chunk), want, [logits, x], names=["logits", "x"])


@pytest.mark.parametrize(("window", "masked", "length", "g"), list(itertools.product(
    [1, 2, 3, 4, 20], [False, True], [1, 7, 12], [0, 3])))
def test_long_short_attention_matches_reference(window, masked, length, g):
    q, k, v = (_randn(3, 2, length, 4, seed=s) for s in (1, 2, 3))
    k_bar, v_bar, q_bar = _randn(3, 2, g, 4, seed=4), _randn(3, 2, g, 4, seed=5), _randn(3, 2, length, 4, seed=6)
    valid = _valid(3, length, seed=length) if masked else None
    kw = dict(window=window, k_valid=valid, q_bar=q_bar)
    assert_same_function(long_short_attention(q, k, v, k_bar, v_bar, **kw),
                         long_short_attention_ref(q, k, v, k_bar, v_bar, **kw),
                         [q, k, v, k_bar, v_bar, q_bar], names=["q", "k", "v", "k_bar", "v_bar", "q_bar"])


@pytest.mark.parametrize(("window", "masked", "shape", "g"), list(itertools.product(
    [1, 2, 3, 5, 20], [False, True], [(1, 1), (1, 9), (4, 9), (9, 9), (12, 12)], [0, 4])))
def test_causal_long_short_attention_matches_reference(window, masked, shape, g):
    t, s = shape
    q, k, v = _randn(3, 2, t, 4, seed=1), _randn(3, 2, s, 4, seed=2), _randn(3, 2, s, 3, seed=3)
    k_bar, v_bar, q_bar = _randn(3, 2, g, 4, seed=4), _randn(3, 2, g, 3, seed=5), _randn(3, 2, t, 4, seed=6)
    valid = _valid(3, s, seed=s + window) if masked else None
    n_vis = torch.randint(0, g + 1, (3, t), generator=torch.Generator().manual_seed(7))
    kw = dict(window=window, k_valid=valid, n_bar_visible=n_vis, q_bar=q_bar)
    assert_same_function(causal_long_short_attention(q, k, v, k_bar, v_bar, **kw),
                         causal_long_short_attention_ref(q, k, v, k_bar, v_bar, **kw),
                         [q, k, v, k_bar, v_bar, q_bar], names=["q", "k", "v", "k_bar", "v_bar", "q_bar"])


@pytest.mark.parametrize("causal", [False, True])
def test_a_window_covering_everything_without_compressed_keys_is_full_attention(causal):
    q, k, v = (_randn(2, 2, 9, 4, seed=s) for s in (1, 2, 3))
    valid = _valid(2, 9, seed=0)
    empty = torch.zeros(2, 2, 0, 4, dtype=torch.float64)
    fn = causal_long_short_attention if causal else long_short_attention
    # Non-causal segments see window // 2 beyond themselves: a window of L already covers every key.
    got = fn(q, k, v, empty, empty, window=9, k_valid=valid)
    want = softmax_attention_ref(q, k, v, causal=causal, q_valid=None, k_valid=valid)
    assert_same_function(got, want, [q, k, v], names=["q", "k", "v"])


def test_queries_without_any_visible_key_output_zero_with_finite_gradients():
    q, k, v = (_randn(2, 2, 6, 4, seed=s) for s in (1, 2, 3))
    k_bar, v_bar = _randn(2, 2, 3, 4, seed=4), _randn(2, 2, 3, 4, seed=5)
    valid = torch.zeros(2, 6, dtype=torch.bool)
    out = causal_long_short_attention(q, k, v, k_bar, v_bar, window=2, k_valid=valid,
                                      n_bar_visible=torch.zeros(2, 6, dtype=torch.long))
    assert out.abs().max() == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().max() == 0 for t in (q, k, v, k_bar, v_bar))


def test_masked_softmax_zeroes_empty_slices():
    logits = torch.randn(2, 5, dtype=torch.float64)
    allow = torch.tensor([[True, False, True, False, False], [False] * 5])
    p = masked_softmax(logits, allow)
    assert p[1].abs().max() == 0 and p[0, [1, 3, 4]].abs().max() == 0
    torch.testing.assert_close(p[0, [0, 2]], torch.softmax(logits[0, [0, 2]], dim=0))


def test_gather_span_takes_each_rows_span_with_zeros_outside():
    x = torch.arange(2 * 5 * 2, dtype=torch.float64).view(2, 5, 2) + 1
    got = gather_span(x, torch.tensor([-1, 3]), 3)
    want = torch.zeros(2, 3, 2, dtype=torch.float64)
    want[0, 1:] = x[0, :2]
    want[1, :2] = x[1, 3:]
    assert torch.equal(got, want)


def test_half_precision_computes_in_float32():
    q, k, v = (torch.randn(1, 2, 40, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3))
    k_bar, v_bar = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    want = causal_long_short_attention(q, k, v, k_bar, v_bar, window=8)
    got = causal_long_short_attention(*(t.bfloat16() for t in (q, k, v, k_bar, v_bar)), window=8)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)
