"""S4D and S4 kernels vs their repeated-multiplication oracles (outputs and gradients w.r.t. the real views of every
parameter, float64), the Nyquist bin, convolution == recurrence, the kernel's independence of L (C is C̄), ZOH vs
bilinear as dt -> 0, real S4D modes as an explicit EMA, float32 phase accuracy on long kernels, dtypes, refusals."""

from __future__ import annotations

import math

import pytest
import torch

from longseq.ops.fft_conv import fft_conv
from longseq.ops.hippo import dplr_legs, s4d_inv
from longseq.ops.ssm_kernel import (
    s4_kernel,
    s4_kernel_ref,
    s4_recurrence,
    s4d_kernel,
    s4d_kernel_ref,
    s4d_recurrence,
)
from longseq.testing.oracle import assert_same_function

F64, C128 = torch.float64, torch.complex128
H = 3
LENGTHS = [1, 2, 17, 48, 64]  # a single tap, the smallest Nyquist bin, odd, not a power of two, a power of two


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    """A leaf holding a complex parameter as its real view (..., 2) -> the complex tensor; real leaves as they are."""
    return torch.view_as_complex(t) if t is not None and t.dim() == 3 else t


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous().requires_grad_(True)


def _dt(g: torch.Generator, lo: float = 1e-3, hi: float = 1.0) -> torch.Tensor:
    return _leaf(torch.exp(torch.empty(H, dtype=F64).uniform_(math.log(lo), math.log(hi), generator=g)))


def _complex(g: torch.Generator, n2: int, *, stable: bool = False) -> torch.Tensor:
    """A real view (H, n2, 2); stable: Re < 0 (an eigenvalue)."""
    x = torch.randn(H, n2, 2, dtype=F64, generator=g)
    if stable:
        x = torch.stack([-torch.exp(x[..., 0]), 4 * x[..., 1]], dim=-1)
    return _leaf(x)


def _s4d_params(seed: int, n2: int, modes: str) -> dict[str, torch.Tensor | None]:
    """modes: "complex" (with B), "complex_noB" (B folded into C), "real" (S4D-Real-like real modes)."""
    g = torch.Generator().manual_seed(seed)
    if modes == "real":
        return {"dt": _dt(g), "A": _leaf(-torch.exp(torch.randn(H, n2, dtype=F64, generator=g))),
                "C": _leaf(torch.randn(H, n2, dtype=F64, generator=g)),
                "B": _leaf(torch.randn(H, n2, dtype=F64, generator=g))}
    return {"dt": _dt(g), "A": _complex(g, n2, stable=True), "C": _complex(g, n2),
            "B": _complex(g, n2) if modes == "complex" else None}


def _s4_params(seed: int, n2: int, init: str) -> dict[str, torch.Tensor]:
    """init: "random" DPLR parameters, or "hippo" (the DPLR form of HiPPO-LegS, N = 2·n2, random C)."""
    g = torch.Generator().manual_seed(seed)
    if init == "hippo":
        Lambda, P, B, _ = dplr_legs(2 * n2)
        view = lambda t: _leaf(torch.view_as_real(t)[None].expand(H, -1, -1))  # noqa: E731
        return {"dt": _dt(g, 1e-3, 0.5), "Lambda": view(Lambda), "P": view(P), "B": view(B), "C": _complex(g, n2)}
    return {"dt": _dt(g), "Lambda": _complex(g, n2, stable=True), "P": _complex(g, n2), "B": _complex(g, n2),
            "C": _complex(g, n2)}


def _s4d(fn, p, L, **kwargs):
    return fn(p["dt"], _c(p["A"]), _c(p["C"]), L, B=_c(p["B"]), **kwargs)


def _s4(fn, p, L, **kwargs):
    return fn(p["dt"], _c(p["Lambda"]), _c(p["P"]), _c(p["B"]), _c(p["C"]), L, **kwargs)


def _live(p: dict[str, torch.Tensor | None]) -> tuple[list[torch.Tensor], list[str]]:
    names = [k for k, v in p.items() if v is not None]
    return [p[k] for k in names], names


# ---------------------------------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("modes", ["complex", "complex_noB", "real"])
@pytest.mark.parametrize("L", LENGTHS)
def test_s4d_kernel_matches_reference(discretization, modes, L):
    p = _s4d_params(seed=L, n2=5, modes=modes)
    inputs, names = _live(p)
    got = _s4d(s4d_kernel, p, L, discretization=discretization)
    assert got.shape == (H, L) and got.dtype == F64
    assert_same_function(got, _s4d(s4d_kernel_ref, p, L, discretization=discretization), inputs, names=names)


@pytest.mark.parametrize("init", ["random", "hippo"])
@pytest.mark.parametrize("L", LENGTHS)
def test_s4_kernel_matches_dense_reference(init, L):
    p = _s4_params(seed=L, n2=8, init=init)
    inputs, names = _live(p)
    got = _s4(s4_kernel, p, L, chunk=5)  # several Cauchy blocks, one of them ragged
    assert got.shape == (H, L) and got.dtype == F64
    assert_same_function(got, _s4(s4_kernel_ref, p, L), inputs, names=names)


def test_s4_single_mode_and_large_steps():
    """N2 = 1 (one conjugate pair, the coupling at its strongest relative to the diagonal) and dt up to 10."""
    g = torch.Generator().manual_seed(7)
    p = {"dt": _dt(g, 0.1, 10.0), "Lambda": _complex(g, 1, stable=True), "P": _complex(g, 1), "B": _complex(g, 1),
         "C": _complex(g, 1)}
    inputs, names = _live(p)
    assert_same_function(_s4(s4_kernel, p, 33), _s4(s4_kernel_ref, p, 33), inputs, names=names)


@pytest.mark.parametrize("L", [2, 16, 64])
def test_nyquist_bin(L):
    """At ω = -1 the Cauchy formula is 0·∞; the exact value is set. Its DFT bin equals the oracle's, and float32
    parameters give a finite kernel close to the float64 one."""
    p = _s4_params(seed=3, n2=8, init="hippo")
    with torch.no_grad():
        got, want = _s4(s4_kernel, p, L), _s4(s4_kernel_ref, p, L)
        torch.testing.assert_close(torch.fft.rfft(got)[:, -1], torch.fft.rfft(want)[:, -1], atol=1e-12, rtol=0)
        low = [p["dt"].float(), *(_c(p[k]).to(torch.complex64) for k in ("Lambda", "P", "B", "C"))]
        k32 = s4_kernel(*low, L)
    assert k32.dtype == torch.float32 and torch.isfinite(k32).all()
    torch.testing.assert_close(k32.double(), want, atol=2e-5 * want.abs().max().item(), rtol=0)


def test_s4_kernel_is_independent_of_length():
    """C is C̄, not C̃ tied to a length: the kernel for L is the prefix of the kernel for any longer length."""
    p = _s4_params(seed=11, n2=8, init="hippo")
    with torch.no_grad():
        long = _s4(s4_kernel, p, 64)
        for L in (1, 2, 17, 32, 63):
            torch.testing.assert_close(_s4(s4_kernel, p, L), long[:, :L], atol=1e-12, rtol=0)


def test_chunking_changes_nothing():
    p4, p4d = _s4_params(seed=5, n2=8, init="random"), _s4d_params(seed=5, n2=8, modes="complex")
    with torch.no_grad():
        want4, want4d = _s4(s4_kernel, p4, 50), _s4d(s4d_kernel, p4d, 50)
        for chunk in (1, 3, 7, 25, 100):
            torch.testing.assert_close(_s4(s4_kernel, p4, 50, chunk=chunk), want4, atol=1e-13, rtol=0)
            torch.testing.assert_close(_s4d(s4d_kernel, p4d, 50, chunk=chunk), want4d, atol=1e-13, rtol=0)


# ---------------------------------------------------------------------------------------------------- recurrence


def _run(dA: torch.Tensor, dB: torch.Tensor, read, u: torch.Tensor) -> torch.Tensor:
    """x_k = dA x_{k-1} + dB u_k (dA diagonal (H, N) or dense (H, N, N)); y_k = read(x_k). u: (B, H, L)."""
    x = torch.zeros(u.shape[0], *dB.shape, dtype=dB.dtype)
    ys = []
    for k in range(u.shape[-1]):
        x = (dA * x if dA.dim() == 2 else (dA @ x[..., None])[..., 0]) + dB * u[..., k, None]
        ys.append(read(x))
    return torch.stack(ys, dim=-1)


@pytest.mark.parametrize(("modes", "discretization"), [
    ("complex", "zoh"), ("complex", "bilinear"), ("complex_noB", "zoh"), ("real", "zoh"), ("real", "bilinear")])
def test_s4d_convolution_equals_recurrence(modes, discretization):
    p = _s4d_params(seed=2, n2=6, modes=modes)
    u = torch.randn(2, H, 40, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        K = _s4d(s4d_kernel, p, 40, discretization=discretization)
        dA, dB = s4d_recurrence(p["dt"], _c(p["A"]), _c(p["C"]), B=_c(p["B"]), discretization=discretization)
        C = _c(p["C"])
        read = (lambda x: 2 * (C * x).sum(-1).real) if modes != "real" else (lambda x: (C * x).sum(-1))
        assert dA.dtype == dB.dtype == (C128 if modes != "real" else F64)
        torch.testing.assert_close(fft_conv(u, K), _run(dA, dB, read, u), atol=1e-11, rtol=0)


@pytest.mark.parametrize("init", ["random", "hippo"])
def test_s4_convolution_equals_recurrence(init):
    p = _s4_params(seed=4, n2=8, init=init)
    u = torch.randn(2, H, 40, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        K = _s4(s4_kernel, p, 40)
        dA, dB, dC = s4_recurrence(p["dt"], *(_c(p[k]) for k in ("Lambda", "P", "B", "C")))
        assert dA.shape == (H, 16, 16) and dB.shape == dC.shape == (H, 16) and dA.dtype == C128
        torch.testing.assert_close(fft_conv(u, K), _run(dA, dB, lambda x: (dC * x).sum(-1).real, u),
                                   atol=1e-11, rtol=0)


# ---------------------------------------------------------------------------------------------------- limits


def test_zoh_and_bilinear_converge_as_dt_vanishes():
    """Both discretise the same ODE: over a fixed time span T = L·dt their kernels (divided by dt) differ by
    O(dt²)."""
    g = torch.Generator().manual_seed(0)
    A = torch.complex(-torch.rand(H, 4, dtype=F64, generator=g) - 0.1, 3 * torch.randn(H, 4, dtype=F64, generator=g))
    C = torch.randn(H, 4, dtype=C128, generator=g)
    errors = []
    for dt in (0.1, 0.01, 0.001):
        dts = torch.full((H,), dt, dtype=F64)
        zoh, bil = (s4d_kernel(dts, A, C, round(2 / dt), discretization=d) for d in ("zoh", "bilinear"))
        errors.append(((zoh - bil).norm() / zoh.norm()).item())
    assert errors[1] < errors[0] / 50 and errors[2] < errors[1] / 50 and errors[2] < 1e-5, errors


def test_real_mode_is_an_ema():
    """One real mode λ < 0 with ZOH: h_t = a h_{t-1} + (1 - a)/(-λ) u_t, a = exp(dt λ), y_t = c h_t — an
    exponential moving average; and a complex mode with Im λ = 0 counts its implicit partner (twice the kernel)."""
    lam, c, dt = torch.tensor([[-0.7]], dtype=F64), torch.tensor([[1.3]], dtype=F64), torch.tensor([0.2], dtype=F64)
    u = torch.randn(2, 1, 30, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = math.exp(0.2 * -0.7)
    h, ys = torch.zeros(2, 1, dtype=F64), []
    for t in range(30):
        h = a * h + (1 - a) / 0.7 * u[..., t]
        ys.append(1.3 * h)
    K = s4d_kernel(dt, lam, c, 30)
    torch.testing.assert_close(fft_conv(u, K), torch.stack(ys, dim=-1), atol=1e-13, rtol=0)
    twice = s4d_kernel(dt, lam.to(C128), c.to(C128), 30)
    torch.testing.assert_close(twice, 2 * K, atol=1e-14, rtol=0)


@pytest.mark.parametrize("re", [-0.5, -1e-4])
def test_long_kernel_phase_in_float32(re):
    """S4D-Inv, N = 64 (|Im λ| up to 1.3e3), dt = 0.1, L = 16384: the phase l·dt·Im λ reaches 2e6 rad. The float32
    kernel stays within 1e-6 · max|K| of the float64 kernel of the same (float32) parameters, which itself equals
    the complex128 repeated-multiplication oracle. With Re λ = -1e-4 (barely damped, so the far taps matter) a
    naive float32 Vandermonde exp(l · dt λ) is off by more than 1e-4 · max|K|: the tolerance bites."""
    L = 16384
    lam = s4d_inv(32)
    A32 = torch.complex(torch.full_like(lam.real, re), lam.imag)[None].to(torch.complex64)
    C32 = torch.randn(1, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    dt32 = torch.tensor([0.1])
    k32 = s4d_kernel(dt32, A32, C32, L)
    k64 = s4d_kernel(dt32.double(), A32.to(C128), C32.to(C128), L)
    scale = k64.abs().max().item()
    assert k32.dtype == torch.float32 and k64.dtype == F64
    torch.testing.assert_close(k64, s4d_kernel_ref(dt32.double(), A32.to(C128), C32.to(C128), L),
                               atol=1e-10 * scale, rtol=0)
    torch.testing.assert_close(k32.double(), k64, atol=1e-6 * scale, rtol=0)
    if re == -1e-4:
        x = dt32[:, None] * A32
        naive = 2 * ((C32 * torch.expm1(x) / A32)[..., None] * torch.exp(x[..., None] * torch.arange(L))).sum(1).real
        assert (naive.double() - k64).abs().max() > 1e-4 * scale


@pytest.mark.parametrize(("dt", "L"), [(1e-4, 4096), (10.0, 1024)])
def test_s4_float32_long_kernel(dt, L):
    """HiPPO N = 32: the float32 kernel within 3e-6 · max|K| of the float64 kernel of the same parameters, for a
    tiny step (dA near I: C̃ = C̄(I - dA^L) cancels) and a large one (bilinear modes near -1 barely decay). Powering
    dA^L in float32 instead fails both (2e-4 and 7e-6)."""
    Lambda, P, B, _ = dplr_legs(32)
    g = torch.Generator().manual_seed(0)
    params = [t[None].expand(H, -1).to(torch.complex64) for t in (Lambda, P, B)]
    params.append(torch.randn(H, 16, dtype=torch.complex64, generator=g))
    dt32 = torch.full((H,), dt)
    k32 = s4_kernel(dt32, *params, L)
    k64 = s4_kernel(dt32.double(), *(t.to(C128) for t in params), L)
    assert k32.dtype == torch.float32
    torch.testing.assert_close(k32.double(), k64, atol=3e-6 * k64.abs().max().item(), rtol=0)


# ---------------------------------------------------------------------------------------------------- dtypes


def test_dtypes():
    p = _s4_params(seed=0, n2=4, init="random")
    with torch.no_grad():
        dt, rest = p["dt"], [_c(p[k]) for k in ("Lambda", "P", "B", "C")]
        assert s4_kernel(dt.float(), *(t.to(torch.complex64) for t in rest), 8).dtype == torch.float32
        assert s4_kernel(dt, *(t.to(torch.complex64) for t in rest), 8).dtype == F64  # any double -> double
        assert s4d_kernel(dt.float(), rest[0].to(torch.complex64), rest[3].to(torch.complex64), 8).dtype \
            == torch.float32
        assert s4d_kernel(dt.half(), rest[0].to(torch.complex64), rest[3].to(torch.complex64), 8).dtype \
            == torch.float32
        dA, dB, dC = s4_recurrence(dt.float(), *(t.to(torch.complex64) for t in rest))
        assert dA.dtype == dB.dtype == dC.dtype == torch.complex64


# ---------------------------------------------------------------------------------------------------- refusals


def _good():
    g = torch.Generator().manual_seed(0)
    dt = torch.rand(H, dtype=F64, generator=g) + 0.1
    lam = torch.complex(-torch.rand(H, 4, dtype=F64, generator=g), torch.randn(H, 4, dtype=F64, generator=g))
    return dt, lam, *(torch.randn(H, 4, dtype=C128, generator=g) for _ in range(3))


S4D_FNS = [lambda dt, A, C, L=8, **kw: s4d_kernel(dt, A, C, L, **kw),
           lambda dt, A, C, L=8, **kw: s4d_kernel_ref(dt, A, C, L, **kw),
           lambda dt, A, C, L=8, **kw: s4d_recurrence(dt, A, C, **kw)]


@pytest.mark.parametrize("fn", range(3))
@pytest.mark.parametrize(("case", "match"), [
    ("dt_2d", r"dt must be a real floating tensor of shape \(H,\), got shape \(3, 1\)"),
    ("dt_complex", r"dt must be a real floating tensor"),
    ("A_1d", r"A must have shape \(3, N2\) with N2 >= 1 .*got \(4,\)"),
    ("A_int", r"A must be a complex \(or, for real modes, real floating\) tensor"),
    ("C_modes", r"C must have shape \(3, 4\) like A .*got \(3, 5\)"),
    ("C_real", r"C must be complex because A is complex, got dtype torch.float64"),
    ("B_rows", r"B must have shape \(3, 4\) like A .*got \(2, 4\)"),
    ("disc", r"discretization must be one of \('zoh', 'bilinear'\), got 'euler'"),
])
def test_s4d_refusals_name_the_argument(fn, case, match):
    dt, A, _, _, C = _good()
    kwargs: dict = {}
    if case == "dt_2d":
        dt = dt[:, None]
    elif case == "dt_complex":
        dt = dt.to(C128)
    elif case == "A_1d":
        A = A[0]
    elif case == "A_int":
        A = torch.ones(H, 4, dtype=torch.int64)
    elif case == "C_modes":
        C = torch.randn(H, 5, dtype=C128)
    elif case == "C_real":
        C = C.real
    elif case == "B_rows":
        kwargs["B"] = torch.randn(2, 4, dtype=C128)
    elif case == "disc":
        kwargs["discretization"] = "euler"
    with pytest.raises(ValueError, match=match):
        S4D_FNS[fn](dt, A, C, **kwargs)


def test_length_and_chunk_refusals():
    dt, lam, P, B, C = _good()
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match=rf"s4d_kernel: L must be an int >= 1, got {bad!r}"):
            s4d_kernel(dt, lam, C, bad)
        with pytest.raises(ValueError, match=rf"s4_kernel_ref: L must be an int >= 1, got {bad!r}"):
            s4_kernel_ref(dt, lam, P, B, C, bad)
    with pytest.raises(ValueError, match=r"s4_kernel: chunk must be None or an int >= 1, got 0"):
        s4_kernel(dt, lam, P, B, C, 8, chunk=0)
    with pytest.raises(ValueError, match=r"s4d_kernel: chunk must be None or an int >= 1, got 0"):
        s4d_kernel(dt, lam, C, 8, chunk=0)


@pytest.mark.parametrize("fn", [s4_kernel, s4_kernel_ref, s4_recurrence])
@pytest.mark.parametrize(("arg", "match"), [
    ("dt", r"dt must be a real floating tensor of shape \(H,\)"),
    ("Lambda", r"Lambda must have shape \(3, N2\) with N2 >= 1"),
    ("P", r"P must have shape \(3, 4\) like Lambda .*got \(3, 4, 1\)"),
    ("B", r"B must be complex because Lambda is complex, got dtype torch.float64"),
    ("C", r"C must have shape \(3, 4\) like Lambda .*got \(3, 0\)"),
])
def test_s4_refusals_name_the_argument(fn, arg, match):
    dt, lam, P, B, C = _good()
    bad = {"dt": dt[:, None], "Lambda": lam[:, :0], "P": P[..., None], "B": B.real, "C": C[:, :0]}[arg]
    args = {"dt": dt, "Lambda": lam, "P": P, "B": B, "C": C} | {arg: bad}
    with pytest.raises(ValueError, match=rf"{fn.__name__}: {match}"):
        fn(*args.values(), *([] if fn is s4_recurrence else [8]))
