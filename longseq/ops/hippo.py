"""HiPPO-LegS and the state-matrix initialisations of S4 and S4D, as plain tensors (no parameters).

S4 and S4D are linear state-space models x' = A x + B u, y = C x whose A is initialised from HiPPO-LegS, the
matrix whose state keeps the Legendre coefficients of the input's whole history. That matrix is badly non-normal,
so S4 never diagonalises it directly: adding a rank-1 term makes it normal,

    S = A + P Pᵀ = -½ I + (skew-symmetric),    P_n = sqrt(n + ½),

and a normal matrix is unitarily diagonalisable in a well-conditioned way. In the eigenbasis W of S,

    A = W (diag(Λ) - p pᴴ) Wᴴ,   p = Wᴴ P,   B = W b,   b = Wᴴ B,

the "diagonal plus low rank" (DPLR) form that S4's kernel algorithm needs. S is real, so its eigenvalues come in
conjugate pairs: only the N/2 with Im λ <= 0 and their eigenvectors V (N, N/2) are kept, W = [V, conj(V)]; the
other half is implicit (longseq's SSM ops, `longseq.ops.ssm_kernel`, add the conjugate modes themselves).

S4D drops P and keeps only the diagonal; its initialisations S4D-Lin and S4D-Inv are closed-form approximations
of the imaginary parts of Λ, and S4D-Real (Mamba's choice) the real diagonal of A.

Everything is float64 / complex128: the eigendecomposition is only trustworthy in double precision (the mixers
cast the results to their own dtype).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64, C128 = torch.float64, torch.complex128
B_CLIP = 2.0  # |Im b| is clipped to this after the rotation, as the S4 reference does (it helps stability)


def _check_size(fn: str, name: str, value: int, *, even: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (2 if even else 1) or (even and value % 2):
        allowed = "an even int >= 2" if even else "an int >= 1"
        raise ValueError(f"{fn}: {name} must be {allowed}, got {value!r}")


def hippo_legs(N: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS: A: (N, N), B: (N,), float64, with (n, k = 0..N-1)

        A[n, k] = -sqrt(2n+1) sqrt(2k+1)   (n > k),    -(n+1)   (n = k),    0   (n < k);    B[n] = sqrt(2n+1).
    """
    _check_size("hippo_legs", "N", N)
    r = torch.sqrt(2 * torch.arange(N, dtype=F64) + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(torch.arange(1, N + 1, dtype=F64))
    return A, r.clone()


def legs_rank_correction(N: int) -> Tensor:
    """P: (N,) float64, P_n = sqrt(n + ½): the rank-1 term with A + P Pᵀ = -½ I + skew for A = hippo_legs(N)."""
    _check_size("legs_rank_correction", "N", N)
    return torch.sqrt(torch.arange(N, dtype=F64) + 0.5)


def dplr_legs(N: int, *, b_clip: float | None = B_CLIP) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The DPLR form of HiPPO-LegS: Lambda: (N/2,), P: (N/2,), B: (N/2,), V: (N, N/2), all complex128.

    With W = [V, conj(V)] (unitary) and the conjugate halves appended (Λ_f = [Λ, conj Λ], p_f = [P, conj P],
    b_f = [B, conj B]):

        hippo_legs(N)[0] = W (diag(Λ_f) - p_f p_fᴴ) Wᴴ,     hippo_legs(N)[1] = W b_f,

    except that Im(B) is clipped to [-b_clip, b_clip] (the S4 reference's choice, default 2; None keeps B exact).
    The clip depends on the phase of each eigenvector, which is torch.linalg.eigh's (as in the reference); it acts
    from N = 4 on. Re Λ = -½ exactly; Im Λ <= 0, ascending. N must be even (an odd N would leave a real eigenvalue
    without a partner).
    """
    _check_size("dplr_legs", "N", N, even=True)
    A, B = hippo_legs(N)
    P = legs_rank_correction(N)
    skew = A + torch.outer(P, P) + 0.5 * torch.eye(N, dtype=F64)  # skew-symmetric: S + ½ I
    # -i·skew is Hermitian, so eigh gives S = V (-½ + i w) Vᴴ with real w, stably.
    w, vecs = torch.linalg.eigh(-1j * skew.to(C128))
    order = torch.argsort(w)
    half = order[: N // 2]  # the N/2 eigenvalues with Im <= 0 (w is never 0 for even N: the spectrum is ±w pairs)
    Lambda = torch.complex(torch.full((N // 2,), -0.5, dtype=F64), w[half])
    V = vecs[:, half]
    b = V.conj().T @ B.to(C128)
    if b_clip is not None:
        b = torch.complex(b.real, b.imag.clamp(-b_clip, b_clip))
    p = V.conj().T @ P.to(C128)
    return Lambda, p, b, V


def s4d_lin(N2: int) -> Tensor:
    """S4D-Lin: λ_n = -½ + iπn, n = 0..N2-1 (N2 complex modes = state size 2·N2), complex128 (N2,)."""
    _check_size("s4d_lin", "N2", N2)
    n = torch.arange(N2, dtype=F64)
    return torch.complex(torch.full_like(n, -0.5), math.pi * n)


def s4d_inv(N2: int) -> Tensor:
    """S4D-Inv: λ_n = -½ + i (N/π) (N/(2n+1) - 1) with N = 2·N2 (the asymptotics of HiPPO-LegS's spectrum),
    n = 0..N2-1, complex128 (N2,). The largest frequency grows like N²/π (about 1.3e3 for N = 64)."""
    _check_size("s4d_inv", "N2", N2)
    n, size = torch.arange(N2, dtype=F64), 2 * N2
    return torch.complex(torch.full_like(n, -0.5), size / math.pi * (size / (2 * n + 1) - 1))


def s4d_real(N: int) -> Tensor:
    """S4D-Real: λ_n = -(n+1), n = 0..N-1, float64 (N,): N real modes (no conjugate partners; Mamba's init)."""
    _check_size("s4d_real", "N", N)
    return -torch.arange(1, N + 1, dtype=F64)
