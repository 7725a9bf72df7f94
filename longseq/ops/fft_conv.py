"""Long convolutions in O(L log L) by FFT, and the explicit Toeplitz-matrix oracles they are tested against.

The building block of S4/S4D (kernel from a state-space model), long-conv and Hyena mixers: a kernel as long as
the sequence, one per channel. Shapes are channels-first: u: (B, H, L), kernels: (H, Lk), skip D: (H,).

A kernel shorter than L is zero-extended. A kernel longer than L keeps its first L taps (the bidirectional
backward kernel its first L-1): the later taps multiply inputs outside the sequence and can never act, so dropping
them changes no output — it truncates the kernel's unused tail, never data.

Padding: a masked position must be zeroed by the caller; convolution is linear so a zero input is a no-op (it adds
nothing to any output). Outputs at masked positions are the caller's to zero too.

Precision: the FFT runs in float32 at least (half-precision inputs are promoted; float64 stays float64), the
output has u's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longseq.ops.precision import compute_dtype


def _check(fn: str, u: Tensor, kernels: dict[str, Tensor], D: Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"{fn}: u must have shape (B, H, L), got {tuple(u.shape)}")
    h = u.shape[1]
    for name, k in kernels.items():
        if k.dim() != 2 or k.shape[0] != h or k.shape[1] == 0:
            raise ValueError(f"{fn}: {name} must have shape (H, Lk) with H = u.shape[1] = {h} channels and Lk >= 1, "
                             f"got {tuple(k.shape)}")
    if D is not None and D.shape != (h,):
        raise ValueError(f"{fn}: D must have shape (H,) = ({h},), got {tuple(D.shape)}")


def _add_skip(y: Tensor, u: Tensor, D: Tensor | None) -> Tensor:
    """y + D u in y's dtype, then cast to u's."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)
    return y.to(u.dtype)


def _fft_size(length: int) -> int:
    """Next power of two >= 2L: the linear convolution of two length-L signals fits without wrapping around."""
    return 1 << max(0, (2 * length - 1).bit_length())


def _circular_conv(u: Tensor, kernel: Tensor, D: Tensor | None) -> Tensor:
    """u: (B, H, L), kernel: (H, <= n) in the compute dtype, zero-extended to n = _fft_size(L) -> y: (B, H, L) in
    u's dtype, y[t] = sum_s kernel[(t-s) mod n] u[s] + D u[t]."""
    length = u.shape[-1]
    n = _fft_size(length)
    y = torch.fft.irfft(torch.fft.rfft(u.to(kernel.dtype), n=n) * torch.fft.rfft(kernel, n=n), n=n)[..., :length]
    return _add_skip(y, u, D)


def fft_conv(u: Tensor, k: Tensor, *, D: Tensor | None = None) -> Tensor:
    """Causal convolution: u: (B, H, L), k: (H, Lk), D: (H,) -> y: (B, H, L),
    y[t] = sum_{s<=t} k[t-s] u[s] + D u[t]."""
    _check("fft_conv", u, {"k": k}, D)
    # Only the taps that can act (see the module docstring); rfft zero-extends the kernel to the FFT size.
    kernel = k[:, : u.shape[-1]].to(compute_dtype(u, k, D))
    return _circular_conv(u, kernel, D)


def fft_conv_bidirectional(u: Tensor, k_fwd: Tensor, k_bwd: Tensor, *, D: Tensor | None = None) -> Tensor:
    """Two-sided convolution with the S4 convention: u: (B, H, L), k_fwd: (H, Lf), k_bwd: (H, Lb), D: (H,) ->
    y: (B, H, L),

        y[t] = sum_{s<=t} k_fwd[t-s] u[s] + sum_{s>t} k_bwd[s-t-1] u[s] + D u[t].

    Lag 0 (the token itself) is counted once, in k_fwd; k_bwd[0] weighs the next token.
    """
    _check("fft_conv_bidirectional", u, {"k_fwd": k_fwd, "k_bwd": k_bwd}, D)
    length = u.shape[-1]
    dtype = compute_dtype(u, k_fwd, k_bwd, D)
    k_fwd, k_bwd = k_fwd[:, :length].to(dtype), k_bwd[:, : max(length - 1, 0)].to(dtype)
    # One circular convolution does both sides: lag -j (j = 1..L-1) is stored at index n - j >= n - L + 1 > L - 1,
    # past every forward lag, because n >= 2L.
    n = _fft_size(length)
    gap = k_fwd.new_zeros(k_fwd.shape[0], n - k_fwd.shape[1] - k_bwd.shape[1])
    return _circular_conv(u, torch.cat((k_fwd, gap, k_bwd.flip(-1)), dim=-1), D)


def fold_lag0(k_fwd: Tensor, k_bwd: Tensor) -> tuple[Tensor, Tensor]:
    """Two-sided kernels in MEGA's convention, both containing lag 0 (y[t] = sum_j k_fwd[j] u[t-j] +
    sum_j k_bwd[j] u[t+j]: the token itself counted twice), rewritten in S4's convention for
    ``fft_conv_bidirectional``: k_fwd[0] + k_bwd[0] at lag 0, and k_bwd without its lag 0."""
    folded = torch.cat((k_fwd[:, :1] + k_bwd[:, :1], k_fwd[:, 1:]), dim=-1)
    rest = k_bwd[:, 1:] if k_bwd.shape[1] > 1 else k_bwd.new_zeros(k_bwd.shape[0], 1)  # Lk >= 1 for the FFT
    return folded, rest


def _toeplitz(length: int, k_fwd: Tensor, k_bwd: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(H, L, L) matrix T with T[t, s] = k_fwd[t-s] for s <= t and k_bwd[s-t-1] for s > t (0 past a kernel's end),
    filled one diagonal (lag) at a time."""
    t = k_fwd.new_zeros(k_fwd.shape[0], length, length, dtype=dtype)
    for lag in range(min(length, k_fwd.shape[1])):
        rows = torch.arange(lag, length, device=k_fwd.device)
        t[:, rows, rows - lag] = k_fwd[:, lag, None].to(dtype)
    if k_bwd is not None:
        for lag in range(min(length - 1, k_bwd.shape[1])):
            rows = torch.arange(0, length - lag - 1, device=k_bwd.device)
            t[:, rows, rows + lag + 1] = k_bwd[:, lag, None].to(dtype)
    return t


def _toeplitz_apply(u: Tensor, t: Tensor, D: Tensor | None) -> Tensor:
    return _add_skip(torch.einsum("hts,bhs->bht", t, u.to(t.dtype)), u, D)


def toeplitz_conv_ref(u: Tensor, k: Tensor, *, D: Tensor | None = None) -> Tensor:
    """Oracle for ``fft_conv``: the explicit lower-triangular Toeplitz matrix times u."""
    _check("toeplitz_conv_ref", u, {"k": k}, D)
    return _toeplitz_apply(u, _toeplitz(u.shape[-1], k, None, compute_dtype(u, k, D)), D)


def toeplitz_conv_bidirectional_ref(u: Tensor, k_fwd: Tensor, k_bwd: Tensor, *, D: Tensor | None = None) -> Tensor:
    """Oracle for ``fft_conv_bidirectional``: the explicit full Toeplitz matrix times u."""
    _check("toeplitz_conv_bidirectional_ref", u, {"k_fwd": k_fwd, "k_bwd": k_bwd}, D)
    return _toeplitz_apply(u, _toeplitz(u.shape[-1], k_fwd, k_bwd, compute_dtype(u, k_fwd, k_bwd, D)), D)
