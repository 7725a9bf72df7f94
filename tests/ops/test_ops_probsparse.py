"""ProbSparse ops: the vectorized attention against the per-query oracle (outputs and gradients, float64), the
sample draws (depend on a row's valid count and the seed only), u and U, and the degenerate limit u >= L."""

from __future__ import annotations

import itertools

import pytest
import torch

from longseq.ops.attention import softmax_attention_ref
from longseq.ops.probsparse import n_top, probsparse_attention, probsparse_attention_ref, sample_keys
from longseq.testing.oracle import assert_same_function


def _qkv(length: int, b: int = 3, h: int = 2, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, length, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def _packed(counts: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.tensor(counts)
    return n, torch.arange(length) < n[:, None]


def test_n_top_is_factor_times_ceil_ln_capped():
    assert [n_top(n, 5) for n in (0, 1, 2, 3, 8, 32, 1000)] == [0, 1, 2, 3, 8, 20, 35]
    assert [n_top(n, 1) for n in (2, 32, 1000)] == [1, 4, 7]


@pytest.mark.parametrize(("counts", "factor", "seed"), list(itertools.product(
    [[12, 12, 12], [12, 7, 0], [1, 5, 12]], [1, 2, 5], [0, 3])))
def test_probsparse_attention_matches_reference(counts, factor, seed):
    q, k, v = _qkv(12, seed=seed)
    n, valid = _packed(counts, 12)
    sample, sample_valid = sample_keys(n, 12, factor, seed)
    n_active = torch.tensor([n_top(c, factor) for c in counts])
    args = (q, k, v, sample, sample_valid, n_active)
    assert_same_function(probsparse_attention(*args, valid=valid), probsparse_attention_ref(*args, valid=valid),
                         [q, k, v], names=["q", "k", "v"])


def test_every_query_active_is_exact_attention():
    """u >= L: every query is active, so the result is softmax attention over the valid keys."""
    q, k, v = _qkv(10)
    n, valid = _packed([10, 6, 3], 10)
    sample, sample_valid = sample_keys(n, 10, 2, seed=0)
    got = probsparse_attention(q, k, v, sample, sample_valid, n, valid=valid)
    want = softmax_attention_ref(q, k, v, q_valid=valid, k_valid=valid)
    assert_same_function(got, want, [q, k, v], names=["q", "k", "v"])


def test_lazy_queries_output_the_mean_value():
    q, k, v = _qkv(16)
    n, valid = _packed([16, 16, 9], 16)
    sample, sample_valid = sample_keys(n, 16, 1, seed=0)
    n_active = torch.tensor([1, 1, 1])
    out = probsparse_attention(q, k, v, sample, sample_valid, n_active, valid=valid).detach()
    mean = torch.stack([v[b, :, : int(n[b])].mean(dim=1) for b in range(3)]).detach()  # (B, H, dv)
    lazy = (out - mean[:, :, None]).abs().amax(dim=-1) == 0  # (B, H, L)
    assert torch.equal(lazy.sum(dim=-1), (n - 1)[:, None].expand(3, 2))  # all but one valid query per head


def test_samples_depend_on_the_valid_count_and_seed_only():
    sample, sample_valid = sample_keys(torch.tensor([5, 9, 5, 0]), 9, 2, seed=4)
    alone, _ = sample_keys(torch.tensor([5]), 5, 2, seed=4)
    u = n_top(5, 2)
    for b in (0, 2):
        assert torch.equal(sample[b, :5, :u], alone[0, :, :u])
        assert sample_valid[b, :5, :u].all() and not sample_valid[b, 5:].any() and not sample_valid[b, :, u:].any()
    assert not sample_valid[3].any()
    assert (sample[1, :9, : n_top(9, 2)] < 9).all() and (sample[0] < 5).all()
    assert not torch.equal(sample_keys(torch.tensor([9]), 9, 2, seed=5)[0], sample_keys(torch.tensor([9]), 9, 2,
                                                                                        seed=4)[0])


def test_rows_without_valid_tokens_output_zero():
    q, k, v = _qkv(6)
    n, valid = _packed([0, 0, 0], 6)
    sample, sample_valid = sample_keys(n, 6, 2, seed=0)
    out = probsparse_attention(q, k, v, sample, sample_valid, torch.zeros(3, dtype=torch.long), valid=valid)
    assert out.abs().max() == 0
