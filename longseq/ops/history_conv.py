"""Causal long convolution continued from an input history: streaming and decoding for kernels without a recurrence.

A long convolution whose kernel is an explicit array (Hyena, the regularized long convolutions, SGConv) has no
state-space form: to continue it past a chunk boundary the layer keeps the inputs it has seen, its *history*, and
each new output is a dot product with it (O(L) per token, the price of an explicit kernel). Shapes are
channels-first like ``fft_conv``: u: (B, H, T), history: (B, H, P), kernels: (H, Lk).

A history is stored *newest first*: column j holds each row's input from j+1 tokens ago, the one lag j+1 of the
kernel multiplies. So decoding a token is one contiguous dot product with the kernel's taps as stored (no reversal
per token), and rows that have seen fewer inputs than P have zeros on the right, which a convolution ignores (they
stand for inputs before the row's start) — rows that advanced by different numbers of valid tokens share one
tensor. Only the last Lk-1 inputs can still act on a future output, so a history never needs more columns.

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
    inputs before them (newest first), k: (H, Lk), D: (H,) -> y: (B, H, T),

        y[t] = sum_{j <= t} k[j] u[t - j] + sum_{j > t} k[j] history[j - t - 1] + D u[t].

    One new token is a dot product with the last Lk-1 inputs (O(Lk) per channel, one read of the history); a
    longer chunk is one FFT convolution over the history (put back in time order) and the chunk."""
    _check("conv_continue", u, history, k)
    history = history[..., : k.shape[1] - 1]  # only these can still act
    if u.shape[-1] != 1:
        return fft_conv(torch.cat((history.flip(-1), u), dim=-1), k, D=D)[..., history.shape[-1]:]
    dtype = compute_dtype(u, k, D)
    taps = k[:, 1: history.shape[-1] + 1].to(dtype)  # lag j + 1 multiplies history[..., j]
    y = torch.einsum("bhp,hp->bh", history.to(dtype), taps) + k[:, 0].to(dtype) * u[..., 0].to(dtype)
    if D is not None:
        y = y + D.to(dtype) * u[..., 0].to(dtype)
    return y[..., None].to(u.dtype)


def conv_continue_ref(u: Tensor, history: Tensor, k: Tensor, *, D: Tensor | None = None) -> Tensor:
    """Oracle of ``conv_continue``: the Toeplitz convolution of the whole sequence, its last T outputs."""
    _check("conv_continue_ref", u, history, k)
    return toeplitz_conv_ref(torch.cat((history.flip(-1), u), dim=-1), k, D=D)[..., history.shape[-1]:]


def push_history(history: Tensor, u: Tensor, keep: int, n_valid: Tensor | None = None) -> Tensor:
    """The history after u: history: (B, H, P) newest first, u: (B, H, T) in time order, with each row's valid
    tokens first when ``n_valid``: (B,) int is given (a packed chunk) -> (B, H, min(keep, P + T)): the last
    ``keep`` valid inputs of each row, newest first, zeros on the right. A new tensor: it aliases neither
    argument."""
    if keep < 0:
        raise ValueError(f"push_history: keep={keep} must be >= 0")
    t, size = u.shape[-1], min(keep, history.shape[-1] + u.shape[-1])
    if n_valid is None:  # only what is kept is copied
        newest = u[..., max(0, t - size):].flip(-1)
        return torch.cat((newest, history[..., : size - newest.shape[-1]]), dim=-1)
    # In [u reversed, history], row b's newest valid input sits at column T - n_valid[b]; keep `size` from there.
    full = torch.cat((u.flip(-1), history), dim=-1)
    index = (t - n_valid)[:, None] + torch.arange(size, device=u.device)  # (B, size)
    beyond = index >= full.shape[-1]  # older than the row's first input
    gathered = full.gather(-1, index.clamp(max=full.shape[-1] - 1)[:, None, :].expand(-1, full.shape[1], -1))
    return gathered.masked_fill(beyond[:, None, :], 0.0)
