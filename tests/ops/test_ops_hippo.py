"""HiPPO-LegS and its DPLR form: the matrix's definition, normal plus rank 1 (A + P Pᵀ = -½ I + skew), the kept
half of the eigendecomposition with its conjugates reproducing S, A and B exactly (Re Λ = -½), the B clip; the
S4D initialisations; the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from longseq.ops.hippo import dplr_legs, hippo_legs, legs_rank_correction, s4d_inv, s4d_lin, s4d_real

F64, C128 = torch.float64, torch.complex128
EVEN = [2, 4, 6, 8, 12, 16]


def _full_basis(V: torch.Tensor) -> torch.Tensor:
    """W = [V, conj V]: the kept eigenvectors and their conjugate partners."""
    return torch.cat([V, V.conj()], dim=-1)


def test_hippo_legs_definition():
    A, B = hippo_legs(4)
    s = [math.sqrt(2 * n + 1) for n in range(4)]
    want = torch.tensor([[-1, 0, 0, 0],
                         [-s[1] * s[0], -2, 0, 0],
                         [-s[2] * s[0], -s[2] * s[1], -3, 0],
                         [-s[3] * s[0], -s[3] * s[1], -s[3] * s[2], -4]], dtype=F64)
    torch.testing.assert_close(A, want, atol=1e-15, rtol=0)
    torch.testing.assert_close(B, torch.tensor(s, dtype=F64), atol=1e-15, rtol=0)
    assert A.dtype == B.dtype == F64


@pytest.mark.parametrize("N", [1, 2, 5, 16, 64])
def test_normal_plus_rank_one(N):
    """A + P Pᵀ = -½ I + (skew-symmetric)."""
    A, _ = hippo_legs(N)
    P = legs_rank_correction(N)
    S = A + torch.outer(P, P)
    torch.testing.assert_close(torch.diagonal(S), torch.full((N,), -0.5, dtype=F64), atol=1e-12, rtol=0)
    skew = S + 0.5 * torch.eye(N, dtype=F64)
    torch.testing.assert_close(skew, -skew.T, atol=1e-12, rtol=0)


@pytest.mark.parametrize("N", EVEN)
def test_dplr_eigendecomposition_with_conjugates(N):
    """V diag(Λ) Vᴴ plus its conjugate half is S; W = [V, conj V] is unitary; Re Λ = -½, Im Λ < 0 ascending."""
    Lambda, P, B, V = dplr_legs(N)
    assert Lambda.shape == P.shape == B.shape == (N // 2,) and V.shape == (N, N // 2)
    assert all(t.dtype == C128 for t in (Lambda, P, B, V))
    A, _ = hippo_legs(N)
    S = A + torch.outer(legs_rank_correction(N), legs_rank_correction(N))
    W, lam = _full_basis(V), torch.cat([Lambda, Lambda.conj()])
    torch.testing.assert_close(W @ torch.diag(lam) @ W.conj().T, S.to(C128), atol=1e-11, rtol=0)
    torch.testing.assert_close(W.conj().T @ W, torch.eye(N, dtype=C128), atol=1e-12, rtol=0)
    torch.testing.assert_close(Lambda.real, torch.full((N // 2,), -0.5, dtype=F64), atol=0, rtol=0)
    assert (Lambda.imag < 0).all() and (Lambda.imag.diff() > 0).all()


@pytest.mark.parametrize("N", EVEN)
def test_dplr_reproduces_hippo(N):
    """A = W (diag Λ_f - p_f p_fᴴ) Wᴴ and (unclipped) B = W b_f: the rotated P and B are the DPLR form of A, B."""
    Lambda, P, B, V = dplr_legs(N, b_clip=None)
    W = _full_basis(V)
    p, b = torch.cat([P, P.conj()]), torch.cat([B, B.conj()])
    A_dplr = torch.diag(torch.cat([Lambda, Lambda.conj()])) - torch.outer(p, p.conj())
    A, B_hippo = hippo_legs(N)
    torch.testing.assert_close(W @ A_dplr @ W.conj().T, A.to(C128), atol=1e-10, rtol=0)
    torch.testing.assert_close(W @ b, B_hippo.to(C128), atol=1e-11, rtol=0)


def test_b_clip():
    """Only Im B is clipped, to [-2, 2] by default; everything else is the unclipped form."""
    clipped, exact = dplr_legs(32), dplr_legs(32, b_clip=None)
    for got, want in zip(clipped[:2] + clipped[3:], exact[:2] + exact[3:], strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(clipped[2].real, exact[2].real, atol=0, rtol=0)
    torch.testing.assert_close(clipped[2].imag, exact[2].imag.clamp(-2, 2), atol=0, rtol=0)
    assert exact[2].imag.abs().max() > 2  # the clip acts at this size


def test_s4d_initialisations():
    lin, inv, real = s4d_lin(4), s4d_inv(32), s4d_real(5)
    assert lin.dtype == inv.dtype == C128 and real.dtype == F64
    torch.testing.assert_close(lin, torch.tensor([-0.5 + 0j, -0.5 + math.pi * 1j, -0.5 + 2 * math.pi * 1j,
                                                  -0.5 + 3 * math.pi * 1j], dtype=C128), atol=1e-15, rtol=0)
    assert inv.shape == (32,) and (inv.real == -0.5).all()
    torch.testing.assert_close(inv.imag[0], torch.tensor(64 / math.pi * 63, dtype=F64))  # ~1.28e3: the largest
    torch.testing.assert_close(inv.imag[-1], torch.tensor(64 / math.pi * (64 / 63 - 1), dtype=F64))
    assert (inv.imag.diff() < 0).all()
    torch.testing.assert_close(real, -torch.arange(1.0, 6.0, dtype=F64), atol=0, rtol=0)


@pytest.mark.parametrize(("fn", "arg", "value"), [
    (hippo_legs, "N", 0), (hippo_legs, "N", 2.0), (legs_rank_correction, "N", -1), (dplr_legs, "N", 5),
    (dplr_legs, "N", 0), (dplr_legs, "N", True), (s4d_lin, "N2", 0), (s4d_inv, "N2", 0), (s4d_real, "N", 0)])
def test_refusals_name_the_argument(fn, arg, value):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: {arg} must be .*got {value!r}"):
        fn(value)
