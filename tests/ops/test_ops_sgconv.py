"""SGConv's multi-scale kernel: the vectorised form against the lag-by-lag interpolation formula, lengths, and
the per-scale decay."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longseq.ops.sgconv import multiscale_kernel, multiscale_kernel_ref, n_scales, scale_factor
from longseq.testing.oracle import assert_same_function


@settings(max_examples=20, deadline=None)
@given(max_len=st.integers(1, 200), d=st.integers(1, 16), length=st.integers(1, 220),
       mode=st.sampled_from(["linear", "nearest"]), decay=st.floats(1.0, 3.0), seed=st.integers(0, 2**16))
def test_vectorised_kernel_equals_the_formula(max_len, d, length, mode, decay, seed):
    g = torch.Generator().manual_seed(seed)
    subs = [torch.randn(3, d, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(n_scales(max_len, d))]
    got = multiscale_kernel(subs, length, decay=decay, interpolation=mode)
    assert got.shape == (3, length)
    assert_same_function(got, multiscale_kernel_ref(subs, length, decay=decay, interpolation=mode), subs)


@pytest.mark.parametrize("max_len", [1, 63, 64, 65, 1000, 1024, 4097])
@pytest.mark.parametrize("d", [1, 32, 64])
def test_scales_cover_max_len_and_no_more_than_needed(max_len, d):
    s = n_scales(max_len, d)
    total = d + sum(d * scale_factor(i) for i in range(1, s))
    assert total == d * 2 ** (s - 1) >= max_len
    assert s == 1 or d * 2 ** (s - 2) < max_len


def test_each_scale_weighs_one_over_decay_as_much_at_initialisation():
    """With "nearest" each stretched lag is a copy, so the mean |k| per scale is exactly the sub-kernels' times
    decay^-i in expectation (linear interpolation averages neighbours and lowers it by up to ~20%)."""
    g = torch.Generator().manual_seed(0)
    d, s = 32, 6
    subs = [torch.randn(256, d, generator=g) for _ in range(s)]
    k = multiscale_kernel(subs, d * 2 ** (s - 1), decay=2.0, interpolation="nearest")
    means, start = [], 0
    for i in range(s):
        n = d * scale_factor(i)
        means.append(k[:, start:start + n].abs().mean().item())
        start += n
    for i in range(1, s):
        assert means[i] / means[0] == pytest.approx(2.0 ** -i, rel=0.1)


def test_unknown_interpolation_is_refused():
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        multiscale_kernel([torch.zeros(1, 2)], 2, interpolation="cubic")
