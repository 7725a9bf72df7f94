"""Convolution kernels and step matrices of linear state-space models: S4D (diagonal) and S4 (DPLR).

A channel h is the ODE x' = A x + B u, y = C x, discretised with step dt_h into x_k = dA x_{k-1} + dB u_k,
y_k = C x_k. Unrolled it is a causal convolution y = K * u with K_l = C dA^l dB (l < L), which `fft_conv` applies
in O(L log L); the recurrence is the step mode. Every function here takes the parameters of H independent channels
and is differentiable w.r.t. all of them (complex ones arrive as complex tensors: a mixer stores real views,
docs/design.md §5, and calls `torch.view_as_complex`).

**Conjugate modes.** Complex parameters hold N2 modes, one per conjugate pair; the state size is N = 2·N2 and the
partners are implicit. For S4D (diagonal A) the modes do not interact, so the kernel is 2·Re of the half sum,
K_l = 2 Re sum_n C_n dB_n dA_n^l; real S4D modes (S4D-Real, a real tensor A) have no partner and K_l is the plain
sum. For S4 the rank-1 term couples every mode with every conjugate, so S4 works in the conj-augmented
N-dimensional space: with Λ_f = [Λ, conj Λ], p_f = [P, conj P], b_f = [B, conj B], c_f = [C, conj C],

    A = diag(Λ_f) - p_f p_fᴴ,   K_l = c_fᵀ dA^l dB,   y_k = c_fᵀ x_k,

which is real (the system is a real one in a complex basis), so the kernel is Re(·) with factor 1, not 2·Re.
In the half space this reads A = diag(Λ) - P Qᵀ with Q = conj(P) (= P Pᴴ), plus the coupling -P Pᵀ to the
conjugate half.

**S4's C is C̄**, the output matrix of the recurrence, not the reference implementation's C̃ = C̄(I - dA^L) tied to
one length L: `s4_kernel` forms C̃ for the L it is asked for, so a layer is not bound to one length and its step
mode uses C̄ directly. (A C̃ trained by the reference at length L converts as C̄ = C̃(I - dA^L)^{-1}.) dA^L is a
dense power: in the conj-augmented space dA is unitarily similar to a *real* N x N matrix (coordinates
[Re x, Im x] of the kept half), so C̄ dA^L is formed by repeated squaring of that real matrix, applied to the row
vector bit by bit: ⌊log2 L⌋ real N x N matmuls per channel, 4x cheaper than complex ones and exact up to
rounding (a diagonalisation of the non-normal A would not be). The squaring runs on dA - I (so a small dt loses
nothing to rounding 1 + small) and in float64 whatever the parameters' precision: a power amplifies rounding by
up to L, and float32 would cost ~1e-4 of the kernel at dt = 1e-4, L = 4096; the cost, H·N³·log2 L, is small.

**S4 kernel (bilinear only).** The DFT of the truncated kernel at the L-th roots of unity ω_j = exp(-2πij/L) is
the generating function C̃ (I - dA ω_j)^{-1} dB = (2/(1+ω_j)) C̃ (g_j - A)^{-1} B, g_j = (2/dt)(1-ω_j)/(1+ω_j);
with A diagonal plus rank 1, the Woodbury identity turns it into four Cauchy sums
r_ab(j) = sum_n dt a_n b_n / (z_j - dt λ_n) over all N modes, z_j = dt g_j = 2i tan(πj/L) (purely imaginary, so
each term is real arithmetic), k̂ = (1 + z_j/2)(r_CB - r_CP r_QB / (1 + r_QP)); K = irfft(k̂, n=L). The Nyquist
frequency (ω = -1, even L) has 1+ω = 0 and z = ∞, a 0·∞ in the formula; its exact value is
(I + dA)^{-1} dB = (dt/2) B, so k̂ = (dt/2) c̃_fᵀ b_f = dt Re(sum_n C̃_n B_n), set directly. The Cauchy sums are
chunked over frequencies (H·N·chunk values at a time) and recomputed in the backward pass instead of stored.

**S4D kernel (ZOH or bilinear).** A Vandermonde product. The phase l·dt·Im λ reaches 1e6 rad for long kernels
(S4D-Inv, N = 64: |Im λ| ~ 1.3e3), where float32 rounding of the angle alone is an error of ~0.1 rad, so
log dA and the exponents l·log dA are computed in float64 from the (cast) parameters and the angles reduced
modulo 2π in float64 before they are rounded to the working precision: dA^l = dA^(qc) · dA^r (l = qc + r,
c ~ sqrt(L)), both factors exponentiated that way; the kernel is one real matmul over the modes,
(H, L/c, 2 N2) x (H, 2 N2, c), in the working precision. Memory is H·N2·(c + L/c), not H·N2·L.

**Precision.** Parameters in float64 / complex128 give a float64 kernel; anything else computes in float32 /
complex64 (half precision is promoted) and returns float32. The O(H·N2) and O(H·N³ log L) preparations
(discretisation, angles, C̃) are done in float64 and cast; only the O(H·N·L) sums run in the working precision.
Measured float32 error (HiPPO / S4D-Inv, N = 32 and 64, dt in [1e-4, 10], L up to 65536): at most ~1.5e-6 of
max|K|, usually below 5e-7.

**Oracles** (`*_ref`): explicit repeated multiplication dA^l in complex128, S4 with the dense conj-augmented
N x N matrices.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from longseq.ops.precision import without_autocast

Discretization = Literal["zoh", "bilinear"]
DISCRETIZATIONS: tuple[str, ...] = ("zoh", "bilinear")
F64, C128 = torch.float64, torch.complex128
# Default S4 chunk: at most this many (channel, mode, frequency) terms at a time. On a CPU a block that stays in
# cache is fastest (2^19 terms: ~2 MiB per float32 tensor); on an accelerator larger blocks amortise launches.
CAUCHY_BUDGET = {"cpu": 1 << 19, "other": 1 << 24}


# ---------------------------------------------------------------------------------------------------- checks


def _check_length(fn: str, L: int) -> None:
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"{fn}: L must be an int >= 1, got {L!r}")


def _check_chunk(fn: str, chunk: int | None) -> None:
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"{fn}: chunk must be None or an int >= 1, got {chunk!r}")


def _check_dt(fn: str, dt: Tensor) -> int:
    if dt.dim() != 1 or not dt.is_floating_point():
        raise ValueError(f"{fn}: dt must be a real floating tensor of shape (H,), got shape {tuple(dt.shape)} "
                         f"and dtype {dt.dtype}")
    return dt.shape[0]


def _check_modes(fn: str, h: int, params: dict[str, Tensor | None], *, is_complex: bool, first: str) -> None:
    """Every given parameter has shape (H, N2) with N2 >= 1 taken from the first one, and is complex if
    is_complex, else real floating."""
    n2 = None
    for name, t in params.items():
        if t is None:
            continue
        if t.dim() != 2 or t.shape[0] != h or t.shape[1] == 0 or (n2 is not None and t.shape[1] != n2):
            want = f"({h}, N2) with N2 >= 1" if n2 is None else f"({h}, {n2}) like {first}"
            raise ValueError(f"{fn}: {name} must have shape {want} (H = dt.shape[0] = {h}), got {tuple(t.shape)}")
        n2 = t.shape[1]
        kind_ok = t.is_complex() if is_complex else (t.is_floating_point() and not t.is_complex())
        if not kind_ok:
            want = "complex" if is_complex else "real floating"
            why = "" if name == first else f" because {first} is {'complex' if is_complex else 'real'}"
            raise ValueError(f"{fn}: {name} must be {want}{why}, got dtype {t.dtype}")


def _check_s4d(fn: str, dt: Tensor, A: Tensor, C: Tensor, B: Tensor | None, discretization: str) -> None:
    h = _check_dt(fn, dt)
    if not (A.is_complex() or A.is_floating_point()):
        raise ValueError(f"{fn}: A must be a complex (or, for real modes, real floating) tensor, got {A.dtype}")
    _check_modes(fn, h, {"A": A, "C": C, "B": B}, is_complex=A.is_complex(), first="A")
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"{fn}: discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")


def _check_s4(fn: str, dt: Tensor, Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor) -> None:
    h = _check_dt(fn, dt)
    _check_modes(fn, h, {"Lambda": Lambda, "P": P, "B": B, "C": C}, is_complex=True, first="Lambda")


def _real_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any parameter is double precision, else float32 (half precision is promoted)."""
    wide = any(t is not None and t.dtype in (torch.float64, torch.complex128) for t in tensors)
    return torch.float64 if wide else torch.float32


def _complex_dtype(real: torch.dtype) -> torch.dtype:
    return torch.complex128 if real == torch.float64 else torch.complex64


def _conj_full(x: Tensor) -> Tensor:
    """(..., N2) -> (..., N): the kept modes followed by their conjugate partners."""
    return torch.cat([x, x.conj()], dim=-1)


# ---------------------------------------------------------------------------------------------------- S4D


def _s4d_discrete(dt: Tensor, A: Tensor, B: Tensor | None, discretization: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dA, dB, log dA), all (H, N2) in double precision: complex128, or float64 for real modes (log dA is
    complex128 always: a bilinear real dA can be negative). exp(l log dA) = dA^l for every integer l whatever the
    branch of the logarithm."""
    dt64 = dt.to(F64)[:, None]
    A64 = A.to(C128) if A.is_complex() else A.to(F64)
    x = dt64 * A64
    if discretization == "zoh":
        dA, dB, log_dA = torch.exp(x), torch.expm1(x) / A64, x.to(C128)
    else:
        half = x / 2
        dA, dB = (1 + half) / (1 - half), dt64 / (1 - half)
        log_dA = 2 * torch.atanh(half.to(C128))  # log((1 + x/2) / (1 - x/2)), accurate for small x
    if B is not None:
        dB = dB * B.to(dB.dtype)
    return dA, dB, log_dA


def _mode_factor(A: Tensor) -> float:
    """2 for complex modes (the conjugate partner is implicit), 1 for real ones."""
    return 2.0 if A.is_complex() else 1.0


def _exp_reduced(re: Tensor, im: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """exp(re + i·im) as (real part, imaginary part) in dtype, from float64 re and im: the angle is reduced modulo
    2π in float64 before it is rounded to dtype, so its error is that of dtype whatever its size."""
    im = im - 2 * math.pi * torch.round(im / (2 * math.pi))
    magnitude, angle = torch.exp(re.to(dtype)), im.to(dtype)
    return magnitude * torch.cos(angle), magnitude * torch.sin(angle)


def vandermonde(weights: Tensor, log_dA: Tensor, L: int, chunk: int | None, dtype: torch.dtype) -> Tensor:
    """weights, log_dA: (H, N2) complex128 (real modes: zero imaginary parts) -> K: (H, L) in dtype,
    K[h, l] = Re sum_n weights[h, n] dA[h, n]^l. Used by every diagonal kernel (S4D, MEGA's EMA).

    l = q c + r: dA^l = dA^(qc) dA^r, both factors from float64 exponents l·log dA (angles reduced modulo 2π in
    float64), so that the phase is exact to the working precision whatever l; then one real matmul over the modes,
    (H, Q, 2 N2) x (H, 2 N2, c), Q = ceil(L / c)."""
    c = min(L, chunk if chunk is not None else 1 << math.ceil(math.log2(math.sqrt(L))))
    q = -(-L // c)
    inner = torch.arange(c, dtype=F64, device=log_dA.device)
    outer = torch.arange(q, dtype=F64, device=log_dA.device)[:, None] * c
    lr, li = log_dA.real, log_dA.imag
    t_re, t_im = _exp_reduced(lr[:, :, None] * inner, li[:, :, None] * inner, dtype)  # (H, N2, c): dA^r
    o_re, o_im = _exp_reduced(lr[:, None, :] * outer, li[:, None, :] * outer, dtype)  # (H, Q, N2): dA^(qc)
    w_re, w_im = weights.real.to(dtype)[:, None, :], weights.imag.to(dtype)[:, None, :]
    b_re, b_im = w_re * o_re - w_im * o_im, w_re * o_im + w_im * o_re  # weights · dA^(qc)
    k = torch.cat([b_re, -b_im], dim=-1) @ torch.cat([t_re, t_im], dim=-2)  # (H, Q, c): Re(base @ table)
    return k.reshape(k.shape[0], q * c)[:, :L]


def s4d_kernel(dt: Tensor, A: Tensor, C: Tensor, L: int, *, B: Tensor | None = None,
               discretization: Discretization = "zoh", chunk: int | None = None) -> Tensor:
    """S4D kernel: dt: (H,) > 0, A: (H, N2) with Re < 0 (complex modes, or real ones), C: (H, N2), B: (H, N2) or
    None (ones: folded into C) -> K: (H, L) real,

        K_l = 2 Re sum_n C_n dB_n dA_n^l      (complex modes; the plain sum for real modes),

    ZOH: dA = exp(dt λ), dB = (exp(dt λ) - 1)/λ · B; bilinear: dA = (1 + dtλ/2)/(1 - dtλ/2), dB = dt B/(1 - dtλ/2).
    chunk: the inner block c of the Vandermonde product (default ~ sqrt(L)); memory is H·N2·(c + L/c) values.
    Float32 output unless a parameter is float64 / complex128. Re λ < 0 and dt > 0 are the caller's to ensure
    (a parameterisation such as -exp(·) does): values are not checked, so that no device sync is forced."""
    _check_s4d("s4d_kernel", dt, A, C, B, discretization)
    _check_length("s4d_kernel", L)
    _check_chunk("s4d_kernel", chunk)
    _, dB, log_dA = _s4d_discrete(dt, A, B, discretization)
    weights = _mode_factor(A) * C.to(dB.dtype) * dB
    return vandermonde(weights.to(C128), log_dA, L, chunk, _real_dtype(dt, A, C, B))


def s4d_kernel_ref(dt: Tensor, A: Tensor, C: Tensor, L: int, *, B: Tensor | None = None,
                   discretization: Discretization = "zoh") -> Tensor:
    """Oracle for ``s4d_kernel``: dA^l by explicit repeated multiplication in complex128 (dB written without
    expm1), cast to the same output dtype."""
    _check_s4d("s4d_kernel_ref", dt, A, C, B, discretization)
    _check_length("s4d_kernel_ref", L)
    dt64, lam = dt.to(F64)[:, None], A.to(C128)
    x = dt64 * lam
    if discretization == "zoh":
        dA, dB = torch.exp(x), (torch.exp(x) - 1) / lam
    else:
        dA, dB = (1 + x / 2) / (1 - x / 2), dt64 / (1 - x / 2)
    if B is not None:
        dB = dB * B.to(C128)
    weights, power, taps = C.to(C128) * dB, torch.ones_like(dA), []
    for _ in range(L):
        taps.append((weights * power).sum(-1))
        power = power * dA
    return (_mode_factor(A) * torch.stack(taps, dim=-1).real).to(_real_dtype(dt, A, C, B))


def s4d_recurrence(dt: Tensor, A: Tensor, C: Tensor, *, B: Tensor | None = None,
                   discretization: Discretization = "zoh") -> tuple[Tensor, Tensor]:
    """Step matrices of S4D, consistent with ``s4d_kernel``: dA: (H, N2), dB: (H, N2), complex for complex modes
    (real for real modes), in the working precision. The step is

        x_k = dA x_{k-1} + dB u_k,    y_k = 2 Re(sum_n C_n x_k[n])   (complex modes; sum_n C_n x_k[n] for real).

    C is the step's output matrix as it is (S4D's C is already discrete); it is taken for the shape and dtype
    checks and the precision it implies."""
    _check_s4d("s4d_recurrence", dt, A, C, B, discretization)
    dA, dB, _ = _s4d_discrete(dt, A, B, discretization)
    real = _real_dtype(dt, A, C, B)
    out = _complex_dtype(real) if A.is_complex() else real
    return dA.to(out), dB.to(out)


# ---------------------------------------------------------------------------------------------------- S4


def _s4_dense_discrete(dt: Tensor, Lambda: Tensor, P: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear dA: (H, N, N), dB: (H, N) of the conj-augmented DPLR system, complex128."""
    dt64 = dt.to(F64)[:, None, None]
    p = _conj_full(P.to(C128))
    A = torch.diag_embed(_conj_full(Lambda.to(C128))) - p[:, :, None] * p.conj()[:, None, :]
    eye = torch.eye(A.shape[-1], dtype=C128, device=A.device)
    M = eye - dt64 / 2 * A
    dA = torch.linalg.solve(M, eye + dt64 / 2 * A)
    dB = torch.linalg.solve(M, dt64 * _conj_full(B.to(C128))[..., None])[..., 0]
    return dA, dB


def s4_recurrence(dt: Tensor, Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Step matrices of S4 in the conj-augmented space, consistent with ``s4_kernel``: dt: (H,), Lambda, P, B, C:
    (H, N2) complex -> dA: (H, N, N), dB: (H, N), dC: (H, N) complex (N = 2·N2, working precision), with

        x_k = dA x_{k-1} + dB u_k,    y_k = Re(dC x_k)   (real up to rounding: no factor 2 in this space).

    dA = (I - dt/2 A)^{-1}(I + dt/2 A), dB = (I - dt/2 A)^{-1} dt b_f, dC = c_f = [C, conj C] (C is C̄)."""
    _check_s4("s4_recurrence", dt, Lambda, P, B, C)
    cdt = _complex_dtype(_real_dtype(dt, Lambda, P, B, C))
    dA, dB = _s4_dense_discrete(dt, Lambda, P, B)
    return dA.to(cdt), dB.to(cdt), _conj_full(C.to(C128)).to(cdt)


def _s4_c_tilde(dt: Tensor, Lambda: Tensor, P: Tensor, C: Tensor, L: int) -> Tensor:
    """C̃ = C̄ (I - dA^L) on the kept half: (H, N2), complex128 (computed in double precision whatever the inputs).

    In coordinates [Re x, Im x] of the kept half, the conj-augmented A is the real matrix
    [[diag Re Λ, -diag Im Λ], [diag Im Λ, diag Re Λ]] - 2 u uᵀ, u = [Re P, Im P], and the output c_fᵀ x_f =
    2 (Re C · Re x - Im C · Im x), so v = [Re C, -Im C] carries C̄. The powers are kept as E_k = dA^(2^k) - I
    (E_0 = (I - dt/2 A)^{-1} dt A, E_{k+1} = 2 E_k + E_k²) and the row vector as w = v (dA^m - I) for the bits of L
    done so far (w <- w + (v + w) E_k), so that a dA near I (small dt) loses nothing to the rounding of I + small;
    at the end C̃ = -w. Float64 because the power amplifies rounding by up to L (a float32 dA^L is off by ~1e-4 for
    dt = 1e-4 or for slowly decaying modes near -1, L = 4096) and costs only H·N³·log2(L)."""
    lr, li, pr, pi = Lambda.real.to(F64), Lambda.imag.to(F64), P.real.to(F64), P.imag.to(F64)
    d_re, d_im = torch.diag_embed(lr), torch.diag_embed(li)
    u = torch.cat([pr, pi], dim=-1)
    A = torch.cat([torch.cat([d_re, -d_im], -1), torch.cat([d_im, d_re], -1)], -2) - 2 * u[:, :, None] * u[:, None]
    eye = torch.eye(A.shape[-1], dtype=F64, device=A.device)
    half_step = dt.to(F64)[:, None, None] / 2 * A
    E = torch.linalg.solve(eye - half_step, 2 * half_step)  # dA - I, without forming dA
    v = torch.cat([C.real, -C.imag], dim=-1).to(F64)[:, None, :]  # (H, 1, N)
    w, n = torch.zeros_like(v), L
    while True:
        if n & 1:
            w = w + (v + w) @ E
        n >>= 1
        if not n:
            break
        E = 2 * E + E @ E
    ct = -w[:, 0]
    n2 = Lambda.shape[-1]
    return torch.complex(ct[:, :n2], -ct[:, n2:])


def _cauchy_block(vmat: Tensor, a: Tensor, b: Tensor, y: Tensor) -> Tensor:
    """vmat: (H, 8, 2N), a, b: (H, N) (dt λ_f = a + ib), y: (F,) -> (H, 8, F): rows k and 4 + k are the real and
    imaginary parts of sum_n v_k,n / (i y_j - a_n - i b_n). With s = y - b and den = a² + s²,
    1 / (iy - x) = (-a - i s) / den; the factors -a and ±1 are folded into vmat, so the block is one matmul with
    [1/den; s/den]."""
    s = y[None, None, :] - b[:, :, None]
    inv = 1 / (a[:, :, None] ** 2 + s * s)
    return vmat @ torch.cat([inv, s * inv], dim=1)


@without_autocast  # the Cauchy matmuls in float32 at least, as every kernel (docs/design.md §5)
def s4_kernel(dt: Tensor, Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, L: int, *,
              chunk: int | None = None) -> Tensor:
    """S4 kernel, bilinear: dt: (H,) > 0, Lambda: (H, N2) complex with Re < 0, P, B, C: (H, N2) complex (C is C̄,
    see the module docstring) -> K: (H, L) real, K_l = c_fᵀ dA^l dB in the conj-augmented system
    A = diag(Λ_f) - p_f p_fᴴ (the same dA, dB, dC as ``s4_recurrence``).

    Truncated generating function at the L-th roots of unity, Cauchy sums + rank-1 Woodbury, the Nyquist bin set
    to its exact value, then irfft. chunk: frequencies per block of the Cauchy sums (default: H·N·chunk <= 2^19
    on a CPU, 2^24 elsewhere); memory is H·N·chunk values per block, and the blocks are recomputed in the backward
    pass rather than stored. Float32 output unless a parameter is float64 / complex128."""
    _check_s4("s4_kernel", dt, Lambda, P, B, C)
    _check_length("s4_kernel", L)
    _check_chunk("s4_kernel", chunk)
    real = _real_dtype(dt, Lambda, P, B, C)
    cdt = _complex_dtype(real)
    dt, Lambda, P, B, C = dt.to(real), Lambda.to(cdt), P.to(cdt), B.to(cdt), C.to(cdt)
    h, n2 = Lambda.shape
    ct = _s4_c_tilde(dt, Lambda, P, C, L).to(cdt)
    x = dt[:, None] * Lambda
    a, b = torch.cat([x.real, x.real], -1), torch.cat([x.imag, -x.imag], -1)  # dt λ over all N modes
    q = P.conj()
    v = _conj_full(dt[:, None, None] * torch.stack([ct * B, ct * P, q * B, q * P], dim=1))  # (H, 4, N)
    # Re: sum (-a v_re) inv + v_im (s inv);  Im: sum (-a v_im) inv - v_re (s inv)
    vmat = torch.cat([torch.cat([-a[:, None] * v.real, v.imag], -1), torch.cat([-a[:, None] * v.imag, -v.real], -1)],
                     dim=1)
    n_cauchy = (L + 1) // 2  # j = 0 .. ceil(L/2) - 1: every rfft bin but the Nyquist one
    y = (2 * torch.tan(math.pi * torch.arange(n_cauchy, dtype=F64, device=dt.device) / L)).to(real)  # z_j = i y_j
    budget = CAUCHY_BUDGET["cpu" if dt.device.type == "cpu" else "other"]
    step = chunk if chunk is not None else max(1, budget // (h * 2 * n2))
    # Recompute the blocks in the backward pass instead of storing them, unless one block does everything.
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (vmat, a, b)) and step < n_cauchy
    blocks = []
    for start in range(0, n_cauchy, step):
        args = (vmat, a, b, y[start: start + step])
        blocks.append(checkpoint(_cauchy_block, *args, use_reentrant=False) if track else _cauchy_block(*args))
    r = torch.cat(blocks, dim=-1)
    r = torch.complex(r[:, :4], r[:, 4:])  # (H, 4, n_cauchy): r_CB, r_CP, r_QB, r_QP
    khat = (r[:, 0] - r[:, 1] * r[:, 2] / (1 + r[:, 3])) * torch.complex(torch.ones_like(y), y / 2)  # x 2/(1+ω)
    if L % 2 == 0:
        nyquist = dt * (ct * B).sum(-1).real  # (dt/2) c̃_fᵀ b_f, the exact value at ω = -1
        khat = torch.cat([khat, torch.complex(nyquist, torch.zeros_like(nyquist))[:, None]], dim=-1)
    return torch.fft.irfft(khat, n=L)


def s4_kernel_ref(dt: Tensor, Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, L: int) -> Tensor:
    """Oracle for ``s4_kernel``: the dense conj-augmented N x N system discretised bilinearly in complex128,
    K_l = Re(c_fᵀ dA^l dB) by repeated multiplication, cast to the same output dtype."""
    _check_s4("s4_kernel_ref", dt, Lambda, P, B, C)
    _check_length("s4_kernel_ref", L)
    dA, x = _s4_dense_discrete(dt, Lambda, P, B)
    c = _conj_full(C.to(C128))
    taps = []
    for _ in range(L):
        taps.append((c * x).sum(-1).real)
        x = (dA @ x[..., None])[..., 0]
    return torch.stack(taps, dim=-1).to(_real_dtype(dt, Lambda, P, B, C))
