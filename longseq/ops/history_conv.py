"""Causal long convolution continued from an input history: streaming and decoding for kernels without a recurrence.

A long convolution whose kernel is an explicit array (Hyena, the regularized long convolutions, SGConv) has no
state-space form: to continue it past a chunk boundary the layer keeps the inputs it has seen, its *history*, and
each new output is a dot product with it (O(L) per token, the price of an explicit kernel). Shapes are
channels-first like ``fft_conv``: u: (B, H, T), history: (B, H, P), kernels: (H, Lk).

A history is *right-aligned*: its last column is each row's most recent input and lag j sits at column P-1-j. Rows
that have seen fewer inputs than P have zeros on the left, which a convolution ignores (they multiply lags beyond
the row's start) — so rows that advanced by different numbers of valid tokens share one tensor. Only the last
Lk-1 inputs can still act on a future output, so a history never needs to be longer than that.

Masks: a masked token is skipped, as in ``fft_conv`` with ``pack`` — the caller packs a chunk (valid tokens first)
before ``conv_continue`` and passes each row's valid count to ``push_history``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longseq.ops.fft_conv import fft_conv, toeplitz_conv_ref
from longseq.ops.precision import compute_dtype


def _check(fn: str, u: Tensor, history: Tensor, k: Tensor) -> None:
    if u.dim() != 3 or history.dim() != 3 or history.shape[:2] != u.shape[:2]:
        raise ValueError(f"{fn}: u must be (B, H, T) and history (B, H, P) with the same B and H, got "
                         f"{tuple(u.shape)} and {tuple(history.shape)}")
    if k.dim() != 2 or k.shape[0] != u.shape[1] or k.shape[1] == 0:
        raise ValueError(f"{fn}: k must have shape (H, Lk) with H = {u.shape[1]} and Lk >= 1, got {tuple(k.shape)}")


def conv_continue(u: Tensor, history: Tensor, k: Tensor, *, D: Tensor | None = None) -> Tensor:
    """The causal convolution's outputs at T new positions: u: (B, H, T) the new inputs, history: (B, H, P) the
    inputs before them (right-aligned), k: (H, Lk), D: (H,) -> y: (B, H, T),

        y[t] = sum_j k[j] [history, u][P + t - j] + D u[t].

    One new token is a dot product with the last Lk-1 inputs (O(Lk) per channel); a longer chunk is one FFT
    convolution over the history and the chunk, of which the last T outputs are kept."""
    _check("conv_continue", u, history, k)
    history = history[..., max(0, history.shape[-1] - (k.shape[1] - 1)):]  # only these can still act
    if u.shape[-1] != 1:
        return fft_conv(torch.cat((history, u), dim=-1), k, D=D)[..., history.shape[-1]:]
    dtype = compute_dtype(u, k, D)
    window = torch.cat((history, u), dim=-1).to(dtype)  # (B, H, W): the newest input last
    taps = k[:, : window.shape[-1]].flip(-1).to(dtype)  # taps[i] weighs window[i]: lag W-1-i
    y = (window[..., window.shape[-1] - taps.shape[-1]:] * taps).sum(-1, keepdim=True)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u.to(dtype)
    return y.to(u.dtype)


def conv_continue_ref(u: Tensor, history: Tensor, k: Tensor, *, D: Tensor | None = None) -> Tensor:
    """Oracle of ``conv_continue``: the Toeplitz convolution of the whole sequence, its last T outputs."""
    _check("conv_continue_ref", u, history, k)
    return toeplitz_conv_ref(torch.cat((history, u), dim=-1), k, D=D)[..., history.shape[-1]:]


def push_history(history: Tensor, u: Tensor, keep: int, n_valid: Tensor | None = None) -> Tensor:
    """The history after u: history: (B, H, P), u: (B, H, T) with each row's valid tokens first when ``n_valid``:
    (B,) int is given (a packed chunk) -> (B, H, min(keep, P + T)): the last ``keep`` valid inputs of each row,
    right-aligned, zeros on the left. A new tensor: it aliases neither argument."""
    if keep < 0:
        raise ValueError(f"push_history: keep={keep} must be >= 0")
    full = torch.cat((history, u), dim=-1)
    size = min(keep, full.shape[-1])
    if n_valid is None:
        return full[..., full.shape[-1] - size:].clone()  # a copy: a view would pin the whole chunk's storage
    # Row b's valid inputs end at column P + n_valid[b]; take the `size` columns before that.
    index = history.shape[-1] + n_valid[:, None] - size + torch.arange(size, device=u.device)  # (B, size)
    gathered = full.gather(-1, index.clamp(min=0)[:, None, :].expand(-1, full.shape[1], -1))
    return gathered.masked_fill((index < 0)[:, None, :], 0.0)
