"""The compiled selective scan (``csrc/selective_scan.cpp``): the calls ``longseq.ops.selective_scan`` dispatches to.

The recurrence and the argument layouts are those of ``longseq.ops.selective_scan`` (its module docstring); the op
validates the arguments, computes the step dt (bias and softplus, in PyTorch: autograd gives delta's and
delta_bias's gradients through it) and the compute dtype, and calls:

- ``scan``: the scan over a sequence, forward and backward (``_Scan``, an autograd Function over the C++ forward
  and backward). Under autograd the forward keeps the state every ``chunk_size`` steps (B·D·N·L/chunk_size
  numbers); the backward recomputes each chunk's states from its checkpoint (cache-sized, one more exp per state
  element) instead of keeping all B·D·L·N of them. Not differentiable twice.
- ``state_update``: one token in one C++ call (decay, input, output, D skip, z gate, and the casts); forward
  only, so the op runs it only when autograd does not record (decoding).

Both compute in the dtype they are given (float32 or float64) and run on as many threads as torch uses, with
results independent of that number.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from longseq.kernels import load

NAME = "selective_scan"


def extension_for(*tensors: Tensor | None, needs_backward: bool = True) -> ModuleType | None:
    """The compiled extension when it can run on ``tensors`` (None entries ignored): all on the CPU, kernels not
    switched off, the build available; else None (the caller runs its PyTorch path). With ``needs_backward=False``
    (a function without a compiled backward) also None while autograd records any of them."""
    recording = not needs_backward and torch.is_grad_enabled()
    for t in tensors:  # a plain loop: per decoded token, this check is part of the cost
        if t is not None and (not t.is_cpu or (recording and t.requires_grad)):
            return None
    return load(NAME)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """u, dt, z: the kernel reads them through their strides (a Mamba block's (B, L, D) tensors seen as (B, D, L)
    are not copied)."""
    return None if t is None else t.to(dtype)


def _dense(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype).contiguous()


def _time_major(bc: Tensor, dtype: torch.dtype) -> Tensor:
    """B or C: (B, N, L) or (B, G, N, L) -> (B, G, L, N), contiguous (a view of a (B, L, N) tensor needs no copy)."""
    grouped = bc.unsqueeze(1) if bc.dim() == 3 else bc
    return grouped.transpose(-1, -2).to(dtype).contiguous()


class _Scan(torch.autograd.Function):
    """u, dt, z: (B, D, L), any strides; A: (D, N); Bt, Ct: (B, G, L, N); D: (D,); h0: (B, D, N), contiguous; all
    of one dtype (D, z, h0 may be None) -> y: (B, D, L), the last state (B, D, N)."""

    @staticmethod
    def forward(ctx, ext: ModuleType, chunk: int, u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor,
                D: Tensor | None, z: Tensor | None, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        y, last, checkpoints = ext.scan_forward(u, dt, A, Bt, Ct, D, z, h0, chunk, True)
        ctx.save_for_backward(u, dt, A, Bt, Ct, D, z, checkpoints)
        ctx.ext, ctx.chunk, ctx.has_h0 = ext, chunk, h0 is not None
        ctx.set_materialize_grads(False)  # a None gradient (an unused output) is passed to the kernel as None
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor | None, dlast: Tensor | None) -> tuple[Tensor | None, ...]:
        u, dt, A, Bt, Ct, D, z, checkpoints = ctx.saved_tensors
        # dy is read through its strides (the gradient of y.sum() is one expanded number: no copy).
        dy = u.new_zeros(()).expand_as(u) if dy is None else dy.to(u.dtype)
        dlast = None if dlast is None else dlast.to(u.dtype).contiguous()
        du, ddt, dA, dBt, dCt, dD, dz, dh0 = ctx.ext.scan_backward(u, dt, A, Bt, Ct, D, z, checkpoints, dy, dlast,
                                                                   ctx.chunk)
        return (None, None, du, ddt, dA, dBt, dCt, dD if D is not None else None, dz if z is not None else None,
                dh0 if ctx.has_h0 else None)


def scan(ext: ModuleType, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
         z: Tensor | None, initial_state: Tensor | None, *, chunk_size: int,
         dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The scan of ``longseq.ops.selective_scan`` with dt the step after bias and softplus: u, dt, z: (B, D, L),
    A: (D, N), B, C: (B, N, L) or (B, G, N, L), D: (D,), initial_state: (B, D, N) -> y: (B, D, L) and the last
    state (B, D, N), both in ``dtype`` (float32 or float64; every argument is cast to it). ``chunk_size``: the
    backward's checkpoint interval."""
    args = (_cast(u, dtype), _cast(dt, dtype), _dense(A, dtype), _time_major(B, dtype), _time_major(C, dtype),
            _dense(D, dtype), _cast(z, dtype), _dense(initial_state, dtype))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        return _Scan.apply(ext, chunk_size, *args)
    y, last, _ = ext.scan_forward(*args, chunk_size, False)
    return y, last


def state_update(ext: ModuleType, state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Tensor | None, z: Tensor | None, *, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``longseq.ops.selective_state_update`` with dt the step after bias and softplus, in one call (casts and
    views in C++, where they cost less per token): state: (B, D, N), x, dt, z: (B, D), A: (D, N), B, C: (B, N) or
    (B, G, N), D: (D,) -> y: (B, D) and the new state (B, D, N), both new tensors in ``dtype``. Forward only
    (``extension_for(needs_backward=False)``)."""
    return ext.state_update(state, x, dt, A, B, C, D, z, dtype)


def block_step(u_t: Tensor, conv_state: Tensor, state: Tensor, weights: tuple[Tensor | None, ...],
               mask_t: Tensor | None) -> list[Tensor] | None:
    """``longseq.ops.mamba_step.mamba_block_step`` (arguments checked by the op; ``weights`` a
    ``MambaStepWeights``) in one C++ call -> [y, new conv state, new state]; None when it does not apply: kernels
    off or unavailable, autograd recording, autocast on, or tensors not all on the CPU in one dtype, float32 or
    float64 (that last check is the C++ side's, where it costs less per token)."""
    if torch.is_autocast_enabled("cpu"):
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u_t, conv_state, state, *weights)):
        return None
    ext = load(NAME)
    if ext is None:
        return None
    return ext.block_step(u_t, conv_state, state, *weights, mask_t)
