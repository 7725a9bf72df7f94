"""MEGA's damped EMA: the kernel form and the step form (via lti_scan) against the paper's loop, in float64
(outputs and gradients); no overflow at long lengths in float32."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.ema import ema_kernel, ema_recurrence, ema_ref
from longseq.ops.fft_conv import fft_conv, toeplitz_conv_ref
from longseq.ops.lti_recurrence import lti_scan
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _params(g: torch.Generator, d: int, h: int) -> list[torch.Tensor]:
    return [torch.randn(d, h, generator=g, dtype=F64, requires_grad=True) for _ in range(4)]


@pytest.mark.parametrize("h", [1, 3])
def test_kernel_form_equals_the_recurrence_loop(h):
    g = torch.Generator().manual_seed(h)
    x = torch.randn(2, 17, 5, generator=g, dtype=F64, requires_grad=True)
    params = _params(g, 5, h)
    conv = toeplitz_conv_ref(x.mT, ema_kernel(*params, 17)).mT
    assert_same_function(conv, ema_ref(x, *params), [x, *params])
    assert_same_function(fft_conv(x.mT, ema_kernel(*params, 17)).mT, ema_ref(x, *params), [x, *params])


def test_step_form_equals_the_recurrence_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, 4, generator=g, dtype=F64, requires_grad=True)
    params = _params(g, 4, 3)
    y, _ = lti_scan(x.mT, x.new_zeros(2, 4, 3), *ema_recurrence(*params))
    assert_same_function(y.mT, ema_ref(x, *params), [x, *params])


def test_impulse_response_is_the_kernel():
    g = torch.Generator().manual_seed(1)
    params = [p.detach() for p in _params(g, 3, 2)]
    impulse = torch.zeros(1, 9, 3, dtype=F64)
    impulse[:, 0] = 1.0
    torch.testing.assert_close(ema_ref(impulse, *params)[0].T, ema_kernel(*params, 9))


def test_long_kernel_in_float32_is_finite_and_decays():
    g = torch.Generator().manual_seed(2)
    params = [torch.randn(8, 16, generator=g) for _ in range(4)]
    k = ema_kernel(*params, 1 << 20)
    assert torch.isfinite(k).all()
    assert k[:, -1000:].abs().max() < k[:, :1000].abs().max()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match=r"shape \(D, h\)"):
        ema_kernel(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 2), 4)
