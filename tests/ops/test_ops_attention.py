"""Softmax attention ops: both fast impls, and the blocked local forms (sliding window, block-local), against the
one-query-at-a-time oracle, outputs and gradients (float64); the local forms' work is O(L·w·d)."""

from __future__ import annotations

import itertools

import pytest
import torch

from longseq.ops.attention import (
    block_local_attention,
    block_local_attention_ref,
    sliding_window_attention,
    sliding_window_attention_ref,
    softmax_attention,
    softmax_attention_ref,
)
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


# -- local attention: sliding window and block-local --------------------------------------------------------------


def _local_masks(length: int) -> torch.Tensor:
    """bool (3, L): row 0 left padding and holes, row 1 right padding, row 2 no valid token at all."""
    valid = torch.ones(3, length, dtype=torch.bool)
    valid[0, :2] = False
    valid[0, 5:7] = False
    valid[0, length - 3] = False
    valid[1, length - 4:] = False
    valid[2] = False
    return valid


def _local_qkv(length: int, b: int = 3):
    g = torch.Generator().manual_seed(length)
    return [torch.randn(b, 2, length, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize(("causal", "masked", "length", "window", "block_size"), [
    *itertools.product([True, False], [False, True], [13], [1, 2, 5, 13, 20], [None]),
    *itertools.product([True, False], [False, True], [17], [4], [1, 3, 7, 40]),
])
def test_sliding_window_matches_reference(causal, masked, length, window, block_size):
    q, k, v = _local_qkv(length)
    valid = _local_masks(length) if masked else None
    want = sliding_window_attention_ref(q, k, v, window=window, causal=causal, valid=valid)
    got = sliding_window_attention(q, k, v, window=window, causal=causal, valid=valid, block_size=block_size)
    assert_same_function(got, want, [q, k, v], names=["q", "k", "v"])


@pytest.mark.parametrize(("causal", "masked", "chunk"),
                         list(itertools.product([True, False], [False, True], [1, 3, 4, 13, 20])))
def test_block_local_matches_reference(causal, masked, chunk):
    q, k, v = _local_qkv(13)
    valid = _local_masks(13) if masked else None
    want = block_local_attention_ref(q, k, v, chunk=chunk, causal=causal, valid=valid)
    got = block_local_attention(q, k, v, chunk=chunk, causal=causal, valid=valid)
    assert_same_function(got, want, [q, k, v], names=["q", "k", "v"])


@pytest.mark.parametrize("causal", [True, False])
def test_local_references_degenerate_to_full_attention_and_to_identity(causal):
    """A window or a chunk covering the sequence is full attention; a window or a chunk of 1 returns v."""
    q, k, v = _local_qkv(9)
    valid = _local_masks(9)
    full = softmax_attention_ref(q, k, v, causal=causal, q_valid=valid, k_valid=valid)
    torch.testing.assert_close(sliding_window_attention_ref(q, k, v, window=9, causal=causal, valid=valid), full)
    torch.testing.assert_close(block_local_attention_ref(q, k, v, chunk=9, causal=causal, valid=valid), full)
    itself = v.masked_fill(~valid[:, None, :, None], 0.0)
    torch.testing.assert_close(sliding_window_attention_ref(q, k, v, window=1, causal=causal, valid=valid), itself)
    torch.testing.assert_close(block_local_attention_ref(q, k, v, chunk=1, causal=causal, valid=valid), itself)


def test_local_windows_count_valid_tokens():
    """A row with holes computes what its valid tokens alone compute: masked tokens take no slot."""
    q, k, v = _local_qkv(13)
    valid = _local_masks(13)
    keep = valid[0]
    for fn, kw in ((sliding_window_attention, {"window": 3}), (block_local_attention, {"chunk": 4})):
        padded = fn(q, k, v, valid=valid, **kw)[0][:, keep]
        alone = fn(*(t[:1, :, keep] for t in (q, k, v)), **kw)[0]
        torch.testing.assert_close(padded, alone, atol=1e-12, rtol=0)
        assert padded.abs().sum() > 0 and fn(q, k, v, valid=valid, **kw)[0][:, ~keep].abs().max() == 0


@pytest.mark.parametrize("causal", [True, False])
def test_local_attention_never_forms_the_full_score_matrix(causal):
    """O(L·w·d) work: the multiply-adds of the blocked forms stay a small multiple of L·w·d, far below L²·d."""
    from torch.utils.flop_counter import FlopCounterMode

    length, window, d = 2048, 16, 8
    q, k, v = (torch.randn(1, 1, length, d) for _ in range(3))
    for run in (lambda: sliding_window_attention(q, k, v, window=window, causal=causal),
                lambda: block_local_attention(q, k, v, chunk=window, causal=causal)):
        with FlopCounterMode(display=False) as counter:
            run()
        flops = counter.get_total_flops()
        assert length * window * d <= flops <= 2 * 2 * 3 * length * window * d  # QK^T and PV over <= 3w keys
        assert flops < 2 * 2 * length * length * d / 20


def test_local_attention_in_half_precision_softmaxes_in_float32():
    q, k, v = (t.detach() for t in _local_qkv(40, b=2))
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, :30] = False
    for fn, kw in ((sliding_window_attention, {"window": 7}), (block_local_attention, {"chunk": 6})):
        want = fn(q, k, v, valid=valid, **kw)
        got = fn(q.bfloat16(), k.bfloat16(), v.bfloat16(), valid=valid, **kw)
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(("fn", "name"), [
    (sliding_window_attention, "window"), (block_local_attention, "chunk"),
    (sliding_window_attention_ref, "window"), (block_local_attention_ref, "chunk"),
])
def test_local_attention_refuses_an_empty_window(fn, name):
    q, k, v = _local_qkv(5)
    with pytest.raises(ValueError, match=f"{name}=0 must be a positive integer"):
        fn(q, k, v, **{name: 0})


def test_local_attention_of_an_empty_sequence_is_empty():
    q, k, v = (torch.randn(2, 2, 0, 4) for _ in range(3))
    assert sliding_window_attention(q, k, v, window=3).shape == (2, 2, 0, 4)
    assert block_local_attention(q, k, v, chunk=3, valid=torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 2, 0, 4)
