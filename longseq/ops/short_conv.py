"""Causal depthwise short convolution (Mamba's conv1d, H3's shift conv): each channel mixes W inputs, the current one
and W-1 before it.

Layout follows the ``causal_conv1d`` package: x: (B, D, L), weight: (D, W), bias: (D,); weight[:, -1] multiplies
the current input. activation: None or "silu". ``dilation`` d (a keyword beyond the package's layout, for dilated
stacks such as a TCN) spaces the taps d tokens apart:

    y[t] = act(bias + sum_i weight[:, i] * x[t - (W-1-i)·d])

so each output sees (W-1)·d + 1 tokens, and the streaming state (B, D, (W-1)·d) holds the last (W-1)·d inputs
(zeros before the first token). With d = 1 this is the package's function and its state (B, D, W-1).

Masks are bool (B, L), True = valid. A masked position is an exact no-op: it neither enters the window nor shifts
it, so each row computes as if its masked tokens were removed (with a hole inside a sequence, the token after the
hole sees the valid tokens before the hole as its neighbours; the dilation counts valid tokens), and its output is
0. The final state is the last (W-1)·d valid inputs, reaching back into the initial state when fewer came.

Every function returns new tensors: no output or state aliases an argument, so a caller may overwrite its inputs
afterwards.

``causal_conv1d`` and ``causal_conv1d_update`` run a compiled kernel (``longseq.kernels.recurrence``: masks
handled in place, no packing; forward and backward) when kernels are available and every tensor is on the CPU in
one dtype, float32 or float64; ``causal_conv1d_ref`` is always the plain loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.kernels import recurrence
from longseq.ops.pack import pack, unpack

ACTIVATIONS = (None, "silu")


def state_width(kernel_size: int, dilation: int = 1) -> int:
    """The inputs a streaming state keeps: (W-1)·d, as far back as the first tap reaches."""
    return (kernel_size - 1) * dilation


def _check(fn: str, x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, state_name: str,
           activation: str | None, dilation: int, *, one_token: bool = False) -> None:
    """x: (B, D, L) with L >= 1, or x_t: (B, D) when ``one_token``."""
    if weight.dim() != 2 or weight.shape[1] == 0:
        raise ValueError(f"{fn}: weight must have shape (D, W) with W >= 1, got {tuple(weight.shape)}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation <= 0:
        raise ValueError(f"{fn}: dilation={dilation!r} must be a positive integer")
    d, w = weight.shape
    keep = state_width(w, dilation)
    if one_token:
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"{fn}: x_t must have shape (B, D) with D = {d} (weight's channels), got {tuple(x.shape)}")
    elif x.dim() != 3 or x.shape[1] != d or x.shape[2] == 0:
        raise ValueError(f"{fn}: x must have shape (B, D, L) with D = {d} (weight's channels) and L >= 1, "
                         f"got {tuple(x.shape)}")
    if bias is not None and bias.shape != (d,):
        raise ValueError(f"{fn}: bias must have shape (D,) = ({d},), got {tuple(bias.shape)}")
    if state is not None and state.shape != (x.shape[0], d, keep):
        raise ValueError(f"{fn}: {state_name} must have shape (B, D, (W-1)·dilation) = {(x.shape[0], d, keep)}, "
                         f"got {tuple(state.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation={activation!r} is not allowed; allowed: None, 'silu'")


def _check_mask(fn: str, name: str, mask: Tensor | None, shape: tuple[int, ...]) -> None:
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != shape):
        raise ValueError(f"{fn}: {name} must be a bool tensor of shape {shape} (True = valid), "
                         f"got {mask.dtype} {tuple(mask.shape)}")


def _activate(y: Tensor, activation: str | None) -> Tensor:
    return F.silu(y) if activation == "silu" else y


def causal_conv1d_update(x_t: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                         activation: str | None = None, mask_t: Tensor | None = None,
                         dilation: int = 1) -> tuple[Tensor, Tensor]:
    """One token: x_t: (B, D), conv_state: (B, D, (W-1)·d), mask_t: bool (B,) -> (y_t: (B, D), new_state: (B, D,
    (W-1)·d)).

    A masked row keeps its state and outputs 0. The new state is a new tensor: neither argument is modified, and
    the caller may overwrite x_t afterwards.
    """
    _check("causal_conv1d_update", x_t, weight, bias, conv_state, "conv_state", activation, dilation, one_token=True)
    _check_mask("causal_conv1d_update", "mask_t", mask_t, tuple(x_t.shape[:1]))
    compiled = recurrence.causal_conv1d(x_t[..., None], weight, bias, conv_state,
                                        None if mask_t is None else mask_t[:, None], activation, dilation)
    if compiled is not None:
        return compiled[0][..., 0], compiled[1]
    return _update(x_t, conv_state, weight, bias, activation, mask_t, dilation)


def _update(x_t: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None,
            mask_t: Tensor | None, dilation: int) -> tuple[Tensor, Tensor]:
    """``causal_conv1d_update``'s plain path, its arguments checked."""
    window = torch.cat((conv_state, x_t[..., None]), dim=-1)  # (B, D, (W-1)·d + 1): a copy, never a view of x_t
    y = (window[..., ::dilation] * weight).sum(dim=-1)  # the W taps, d apart, the last on x_t
    if bias is not None:
        y = y + bias
    y = _activate(y, activation)
    if mask_t is None:
        return y, window[..., 1:]
    return y.masked_fill(~mask_t[:, None], 0.0), torch.where(mask_t[:, None, None], window[..., 1:], conv_state)


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, initial_state: Tensor | None = None,
                      activation: str | None = None, return_final_state: bool = False,
                      mask: Tensor | None = None, dilation: int = 1) -> Tensor | tuple[Tensor, Tensor]:
    """Oracle: an explicit loop over time, one ``causal_conv1d_update`` per token. Same contract as
    ``causal_conv1d``."""
    _check("causal_conv1d_ref", x, weight, bias, initial_state, "initial_state", activation, dilation)
    _check_mask("causal_conv1d_ref", "mask", mask, (x.shape[0], x.shape[-1]))
    keep = state_width(weight.shape[1], dilation)
    state = x.new_zeros(x.shape[0], x.shape[1], keep) if initial_state is None else initial_state
    ys = []
    for t in range(x.shape[-1]):
        y_t, state = _update(x[..., t], state, weight, bias, activation, None if mask is None else mask[:, t],
                             dilation)
        ys.append(y_t)
    y = torch.stack(ys, dim=-1)
    return (y, state) if return_final_state else y


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, initial_state: Tensor | None = None,
                  activation: str | None = None, return_final_state: bool = False,
                  mask: Tensor | None = None, dilation: int = 1) -> Tensor | tuple[Tensor, Tensor]:
    """x: (B, D, L), weight: (D, W), bias: (D,), initial_state: (B, D, (W-1)·d), mask: bool (B, L) ->
    y: (B, D, L), and the final state (B, D, (W-1)·d) when ``return_final_state``; d = ``dilation``.

    y[t] = act(bias + sum_i weight[:, i] * [initial_state, x][t + i·d]) (x[t] sits at index t + (W-1)·d of the
    concatenation), by one grouped, dilated ``F.conv1d``. With a mask, each row's valid tokens are first packed to
    its front (``longseq.ops.pack``), convolved as one contiguous sequence, and their outputs unpacked to their
    positions.
    """
    _check("causal_conv1d", x, weight, bias, initial_state, "initial_state", activation, dilation)
    _check_mask("causal_conv1d", "mask", mask, (x.shape[0], x.shape[-1]))
    compiled = recurrence.causal_conv1d(x, weight, bias, initial_state, mask, activation, dilation)
    if compiled is not None:
        return compiled if return_final_state else compiled[0]
    b, d, length = x.shape
    keep = state_width(weight.shape[1], dilation)
    if mask is not None:
        x = pack(x, mask, dim=2)  # valid tokens first: the convolution sees each row without its holes
    if initial_state is None and not return_final_state:
        # From an empty window, conv1d's own zero padding (on both sides; the last outputs are dropped) replaces
        # concatenating zeros in front: that copy of the whole input costs as much as the convolution at long L.
        y = F.conv1d(x, weight[:, None, :], bias, groups=d, dilation=dilation, padding=keep)[..., :length]
        y = _activate(y, activation)
        return y if mask is None else unpack(y, mask, dim=2)
    state = x.new_zeros(b, d, keep) if initial_state is None else initial_state
    padded = torch.cat((state, x), dim=-1)  # (B, D, (W-1)·d + L)
    y = _activate(F.conv1d(padded, weight[:, None, :], bias, groups=d, dilation=dilation), activation)
    if mask is None:
        # A copy: a view would pin the whole chunk's storage for as long as the state lives.
        final = padded[..., length:].clone()
    else:
        y = unpack(y, mask, dim=2)
        # The last (W-1)·d valid inputs are slots n_valid .. n_valid + (W-1)·d - 1 of [state, packed x].
        slots = mask.sum(dim=1)[:, None] + torch.arange(keep, device=x.device)
        final = padded.gather(2, slots[:, None, :].expand(b, d, keep))
    return (y, final) if return_final_state else y
