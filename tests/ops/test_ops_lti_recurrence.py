"""The LTI recurrence (S4/S4D step mode) against the convolution mode: the same kernel K_l = Re(C dA^l dB)."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.fft_conv import toeplitz_conv_ref
from longseq.ops.hippo import dplr_legs, s4d_lin, s4d_real
from longseq.ops.lti_recurrence import LTIBlockStep, lti_block_step, lti_scan, lti_step, real_dense_form
from longseq.ops.ssm_kernel import s4_kernel_ref, s4_recurrence, s4d_kernel_ref, s4d_recurrence
from longseq.testing.oracle import assert_same_function

H, L, BATCH = 3, 20, 2
C128 = torch.complex128


def _u(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, H, L, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _s4d(real: bool = False):
    g = torch.Generator().manual_seed(1)
    dt = torch.rand(H, generator=g, dtype=torch.float64) * 0.5 + 0.05
    if real:
        a = s4d_real(4).expand(H, 4).clone()
        c = torch.randn(H, 4, generator=g, dtype=torch.float64)
    else:
        a = s4d_lin(3).expand(H, 3).clone()
        c = torch.complex(*torch.randn(2, H, 3, generator=g, dtype=torch.float64))
    return dt, a, c


def test_diagonal_recurrence_is_the_s4d_convolution():
    for real in (False, True):
        for disc in ("zoh", "bilinear"):
            dt, a, c = _s4d(real)
            u = _u()
            want = toeplitz_conv_ref(u, s4d_kernel_ref(dt, a, c, L, discretization=disc))
            dA, dB = s4d_recurrence(dt, a, c, discretization=disc)
            x0 = torch.zeros(BATCH, H, a.shape[1], dtype=dA.dtype)
            got, _ = lti_scan(u, x0, dA, dB, c.to(dA.dtype))
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


def test_dense_recurrence_is_the_s4_convolution():
    lam, p, b, _ = dplr_legs(6)
    g = torch.Generator().manual_seed(2)
    dt = torch.rand(H, generator=g, dtype=torch.float64) * 0.5 + 0.05
    lam, p, b = (t.expand(H, 3).clone() for t in (lam, p, b))
    c = torch.complex(*torch.randn(2, H, 3, generator=g, dtype=torch.float64))
    u = _u(3)
    want = toeplitz_conv_ref(u, s4_kernel_ref(dt, lam, p, b, c, L))
    dA, dB, dC = real_dense_form(*s4_recurrence(dt, lam, p, b, c))
    got, _ = lti_scan(u, torch.zeros(BATCH, H, 6, dtype=torch.float64), dA, dB, dC)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


def test_real_dense_form_is_the_complex_conj_augmented_step():
    lam, p, b, _ = dplr_legs(6)
    g = torch.Generator().manual_seed(5)
    c = torch.complex(*torch.randn(2, 1, 3, generator=g, dtype=torch.float64))
    dA, dB, dC = s4_recurrence(torch.tensor([0.3], dtype=torch.float64), lam[None], p[None], b[None], c)
    R, rb, rc = real_dense_form(dA, dB, dC)
    z = torch.complex(*torch.randn(2, 1, 3, generator=g, dtype=torch.float64))
    full = torch.cat([z, z.conj()], dim=-1)
    new_full = dA[0] @ full[0] + dB[0] * 0.7
    x = torch.view_as_real(z).reshape(1, 6)
    new = R[0] @ x[0] + rb[0] * 0.7
    torch.testing.assert_close(new, torch.view_as_real(new_full[:3]).reshape(6))
    torch.testing.assert_close(rc[0] @ new, (dC[0] @ new_full).real)


def test_chunks_continue_from_the_state_and_gradients_flow_through_it():
    dt, a, c = _s4d()
    u = _u(4).requires_grad_(True)
    c = c.clone().requires_grad_(True)
    dA, dB = s4d_recurrence(dt, a, c, discretization="zoh")
    x0 = torch.zeros(BATCH, H, 3, dtype=C128)
    whole, x_whole = lti_scan(u, x0, dA, dB, c)
    y1, x1 = lti_scan(u[..., :7], x0, dA, dB, c)
    y2, x2 = lti_scan(u[..., 7:], x1, dA, dB, c)
    assert_same_function((torch.cat([y1, y2], -1), torch.view_as_real(x2)), (whole, torch.view_as_real(x_whole)),
                         [u, c], names=["u", "C"])


def test_a_masked_step_is_a_no_op_that_outputs_zero():
    dt, a, c = _s4d()
    dA, dB = s4d_recurrence(dt, a, c, discretization="zoh")
    x = torch.randn(BATCH, H, 3, dtype=C128)
    before = x.clone()
    y, new = lti_step(x, torch.randn(BATCH, H, dtype=torch.float64), dA, dB, c, torch.tensor([False, True]))
    assert torch.equal(x, before)  # functional
    assert torch.equal(new[0], x[0]) and not torch.equal(new[1], x[1])
    assert y[0].abs().max() == 0


def test_a_bound_block_step_is_the_op_for_diagonal_and_dense_steps():
    """``LTIBlockStep`` against ``lti_block_step`` on the same arguments: S4D's diagonal steps (the state also as its
    real view), S4's dense ones, each output layer."""
    g = torch.Generator().manual_seed(6)
    dt, a, c = _s4d()
    diagonal = (*s4d_recurrence(dt, a, c, discretization="zoh"), c)
    lam, p, b, _ = dplr_legs(6)
    lam, p, b = (t.expand(H, 3).clone() for t in (lam, p, b))
    dense = real_dense_form(*s4_recurrence(dt, lam, p, b, c))
    D, weight, bias = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((H,), (2 * H, H), (2 * H,)))
    u_t, mask_t = torch.randn(BATCH, H, generator=g, dtype=torch.float64), torch.tensor([True, False])
    for steps, x in ((diagonal, torch.randn(BATCH, H, 3, generator=g, dtype=C128)),
                     (dense, torch.randn(BATCH, H, 6, generator=g, dtype=torch.float64))):
        for output in ("none", "silu", "glu"):
            want = lti_block_step(x, u_t, *steps, D, mask_t, output=output, weight=weight, bias=bias)
            bound = LTIBlockStep(*steps, D, output=output, weight=weight, bias=bias)
            for state in [x, torch.view_as_real(x)] if x.is_complex() else [x]:
                y, new = bound(state, u_t, mask_t)
                new = torch.view_as_complex(new) if state.dim() == 4 else new
                assert torch.equal(y, want[0]) and torch.equal(new, want[1])


def test_a_bound_block_step_names_what_is_wrong():
    dt, a, c = _s4d()
    dA, dB = s4d_recurrence(dt, a, c, discretization="zoh")
    D = torch.ones(H, dtype=torch.float64)
    step = LTIBlockStep(dA, dB, c, D)
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, M\) = \(B, 3, 3\)"):
        step(torch.zeros(BATCH, H, 4, dtype=C128), torch.zeros(BATCH, H, dtype=torch.float64))
    with pytest.raises(ValueError, match="and u_t"):
        step(torch.zeros(BATCH, H, 3, dtype=C128), torch.zeros(BATCH + 1, H, dtype=torch.float64))
    real = LTIBlockStep(dA.real, dB.real, c.real, D)
    with pytest.raises(ValueError, match="real view"):  # real modes have no real view
        real(torch.zeros(BATCH, H, 3, 2, dtype=torch.float64), torch.zeros(BATCH, H, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"D must have shape \(H,\)"):
        LTIBlockStep(dA, dB, c, D[:, None])
    with pytest.raises(ValueError, match="output='glu' needs weight"):
        LTIBlockStep(dA, dB, c, D, output="glu")
    with pytest.raises(ValueError, match=r"output='tanh' is not allowed"):
        LTIBlockStep(dA, dB, c, D, output="tanh")
