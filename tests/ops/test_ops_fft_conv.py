"""FFT long convolutions vs the explicit Toeplitz-matrix oracles (outputs and gradients, float64), the oracles vs
the definition written as a double loop, and the refusals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longseq.ops.fft_conv import (
    fft_conv,
    fft_conv_bidirectional,
    fold_lag0,
    toeplitz_conv_bidirectional_ref,
    toeplitz_conv_ref,
)
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 40), k_len=st.integers(1, 50), skip=st.booleans(), seed=st.integers(0, 2**16))
def test_fft_conv_matches_toeplitz(length, k_len, skip, seed):
    g = torch.Generator().manual_seed(seed)
    u, k, D = _randn(g, 2, 3, length), _randn(g, 3, k_len), _randn(g, 3) if skip else None
    inputs = [u, k] + ([D] if skip else [])
    assert_same_function(fft_conv(u, k, D=D), toeplitz_conv_ref(u, k, D=D), inputs)


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 40), f_len=st.integers(1, 50), b_len=st.integers(1, 50), skip=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fft_conv_bidirectional_matches_toeplitz(length, f_len, b_len, skip, seed):
    g = torch.Generator().manual_seed(seed)
    u, kf, kb, D = _randn(g, 2, 3, length), _randn(g, 3, f_len), _randn(g, 3, b_len), _randn(g, 3) if skip else None
    inputs = [u, kf, kb] + ([D] if skip else [])
    assert_same_function(fft_conv_bidirectional(u, kf, kb, D=D), toeplitz_conv_bidirectional_ref(u, kf, kb, D=D),
                          inputs)


def _definition(u, k_fwd, k_bwd, D):
    """The docstring's formula, term by term."""
    length = u.shape[-1]
    y = D[:, None] * u
    for t in range(length):
        for s in range(length):
            if s <= t and t - s < k_fwd.shape[1]:
                y[..., t] += k_fwd[:, t - s] * u[..., s]
            if k_bwd is not None and s > t and s - t - 1 < k_bwd.shape[1]:
                y[..., t] += k_bwd[:, s - t - 1] * u[..., s]
    return y


@pytest.mark.parametrize(("length", "f_len", "b_len"), [(1, 1, 1), (6, 3, 4), (6, 6, 5), (5, 9, 9)])
def test_oracles_follow_the_definition(length, f_len, b_len):
    g = torch.Generator().manual_seed(length * 100 + f_len)
    u, kf, kb, D = (torch.randn(*s, generator=g, dtype=F64) for s in ((2, 3, length), (3, f_len), (3, b_len), (3,)))
    torch.testing.assert_close(toeplitz_conv_ref(u, kf, D=D), _definition(u, kf, None, D), atol=1e-13, rtol=0)
    torch.testing.assert_close(toeplitz_conv_bidirectional_ref(u, kf, kb, D=D), _definition(u, kf, kb, D),
                               atol=1e-13, rtol=0)


def test_bidirectional_convention_on_an_impulse():
    """Lag 0 is k_fwd[0] (counted once); the token right after an impulse sees k_fwd[1], the one right before it
    sees k_bwd[0]."""
    u = torch.zeros(1, 1, 7, dtype=F64)
    u[..., 3] = 1.0
    kf, kb = torch.tensor([[10.0, 11.0, 12.0]], dtype=F64), torch.tensor([[20.0, 21.0]], dtype=F64)
    y = fft_conv_bidirectional(u, kf, kb)[0, 0]
    torch.testing.assert_close(y, torch.tensor([0.0, 21.0, 20.0, 10.0, 11.0, 12.0, 0.0], dtype=F64),
                               atol=1e-12, rtol=0)


def test_taps_past_the_sequence_never_act():
    g = torch.Generator().manual_seed(1)
    u, k = torch.randn(2, 3, 8, generator=g, dtype=F64), _randn(g, 3, 20)
    torch.testing.assert_close(fft_conv(u, k), fft_conv(u, k[:, :8].detach()), atol=1e-12, rtol=0)
    (grad,) = torch.autograd.grad(fft_conv(u, k).sum(), k)
    assert grad[:, 8:].abs().max() == 0 and grad[:, :8].abs().min() > 0


def test_zeroed_padding_is_a_no_op():
    """The caller's masking convention: zeroing a padded token gives the same valid outputs as removing it at the
    end (right padding), and the convolution itself never wraps around (no output sees a later token)."""
    g = torch.Generator().manual_seed(2)
    u, k = torch.randn(1, 3, 10, generator=g, dtype=F64), torch.randn(3, 10, generator=g, dtype=F64)
    padded = torch.cat((u[..., :6], torch.zeros(1, 3, 4, dtype=F64)), dim=-1)
    torch.testing.assert_close(fft_conv(padded, k)[..., :6], fft_conv(u[..., :6], k), atol=1e-12, rtol=0)
    torch.testing.assert_close(fft_conv(padded, k)[..., :6], fft_conv(u, k)[..., :6], atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computes_in_float32(dtype):
    g = torch.Generator().manual_seed(3)
    u, kf, kb = (torch.randn(*s, generator=g).to(dtype) for s in ((2, 3, 16), (3, 16), (3, 5)))
    y = fft_conv(u, kf)
    assert y.dtype == dtype
    torch.testing.assert_close(y, toeplitz_conv_ref(u.float(), kf.float()).to(dtype))
    y = fft_conv_bidirectional(u, kf, kb)
    assert y.dtype == dtype
    torch.testing.assert_close(y, toeplitz_conv_bidirectional_ref(u.float(), kf.float(), kb.float()).to(dtype))


@pytest.mark.parametrize(("call", "words"), [
    (lambda u: fft_conv(u, torch.randn(4, 5)), ["k must have shape (H, Lk)", "3 channels", "(4, 5)"]),
    (lambda u: fft_conv(u, torch.randn(3, 0)), ["Lk >= 1", "(3, 0)"]),
    (lambda u: fft_conv(u[0], torch.randn(3, 5)), ["u must have shape (B, H, L)", "(3, 8)"]),
    (lambda u: fft_conv(u, torch.randn(3, 5), D=torch.randn(4)), ["D must have shape (H,)", "(4,)"]),
    (lambda u: fft_conv_bidirectional(u, torch.randn(3, 5), torch.randn(2, 5)), ["k_bwd", "(2, 5)"]),
    (lambda u: toeplitz_conv_ref(u, torch.randn(4, 5)), ["toeplitz_conv_ref", "(4, 5)"]),
])
def test_refusals_name_the_argument(call, words):
    with pytest.raises(ValueError) as info:
        call(torch.randn(2, 3, 8))
    for word in words:
        assert word in str(info.value)


def test_fold_lag0_turns_megas_convention_into_s4s():
    """MEGA: y[t] = sum_j kf[j] u[t-j] + sum_j kb[j] u[t+j] (lag 0 in both) — written out as a double loop."""
    g = torch.Generator().manual_seed(3)
    u, kf, kb = torch.randn(2, 3, 7, generator=g, dtype=F64), *(torch.randn(3, 7, generator=g, dtype=F64)
                                                                 for _ in range(2))
    want = torch.zeros_like(u)
    for t in range(7):
        for s in range(7):
            want[..., t] += (kf[:, t - s] if s <= t else 0) * u[..., s] + (kb[:, s - t] if s >= t else 0) * u[..., s]
    torch.testing.assert_close(fft_conv_bidirectional(u, *fold_lag0(kf, kb)), want)
    assert fold_lag0(kf[:, :1], kb[:, :1])[1].shape == (3, 1)
