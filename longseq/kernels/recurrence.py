"""The Python side of the compiled recurrence kernels (``csrc/recurrence.cpp``): autograd Functions and entry points
for the ops of ``longseq.ops.lti_recurrence``, ``longseq.ops.ssd`` and ``longseq.ops.short_conv``.

Each entry point returns the op's result, or None when the compiled path does not apply — kernels switched off or
unavailable (``longseq.kernels.load``), a tensor off the CPU, a dtype or a shape the kernels do not take — and the
op then runs its plain PyTorch path. Outside autograd the extension is called directly (a decode step pays one
Python call into C++); under autograd through a ``torch.autograd.Function`` whose backward is the C++ backward,
which recomputes the forward's states from checkpoints every 64 tokens instead of storing them (see the C++ file).
The fused decode steps (``lti_block_step``, ``ssd_block_step``, ``mamba2_block_step``) run outside autograd only:
under autograd their ops run the composition of the ops above, each with its compiled backward.

Complex states and parameters (S4D) are passed as they are (C++ reads them as interleaved (re, im) pairs), or, to
the fused LTI step, as their real views (..., M, 2), the layout states are stored in (``BoundLTIBlockStep``);
gradients follow PyTorch's convention for complex tensors (dL/dRe + i dL/dIm).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from longseq import kernels

NAME = "recurrence"
REAL = (torch.float32, torch.float64)
REAL_OF = {torch.float32: torch.float32, torch.float64: torch.float64, torch.complex64: torch.float32,
           torch.complex128: torch.float64}  # the dtypes the LTI kernels take -> their real counterpart


def extension(*tensors: Tensor | None) -> ModuleType | None:
    """The compiled module when kernels are available and every given tensor is on the CPU, else None."""
    for t in tensors:
        if t is not None and not t.is_cpu:
            return None
    return kernels.load(NAME)


def _tracked(*tensors: Tensor | None) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def _one_dtype(dtype: torch.dtype, *tensors: Tensor | None) -> bool:
    return all(t is None or t.dtype == dtype for t in tensors)


# ------------------------------------------------------------------------------------------------ diagonal LTI


def _lti_args_ok(u: Tensor, x0: Tensor, dA: Tensor, dB: Tensor, C: Tensor, mask: Tensor | None) -> bool:
    """Whether the recurrence's arguments are what the kernels take: x0: (B, H, M), dA, dB, C: (H, M) in one dtype
    (complex64/128 or float32/64), u: (B, H, T) real, mask: bool (B, T). Anything else (broadcast shapes, S4's dense
    dA, mixed dtypes) is left to the plain path."""
    if REAL_OF.get(x0.dtype) is None or not _one_dtype(x0.dtype, dA, dB, C) or x0.dim() != 3 or u.dim() != 3:
        return False
    b, h, m = x0.shape
    if dA.shape != (h, m) or dB.shape != (h, m) or C.shape != (h, m) or u.shape[:2] != (b, h) or u.is_complex():
        return False
    return mask is None or (mask.dtype == torch.bool and mask.shape == (b, u.shape[2]))


class _LTIScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext: ModuleType, u: Tensor, x0: Tensor, dA: Tensor, dB: Tensor, C: Tensor,
                mask: Tensor | None) -> tuple[Tensor, Tensor]:
        ctx.ext = ext
        ctx.save_for_backward(u, x0, dA, dB, C, mask)
        return tuple(ext.lti_scan_forward(u, x0, dA, dB, C, mask))

    @staticmethod
    def backward(ctx, gy: Tensor, gx_last: Tensor) -> tuple[Tensor | None, ...]:
        u, x0, dA, dB, C, mask = ctx.saved_tensors
        return None, *ctx.ext.lti_scan_backward(gy, gx_last, u, x0, dA, dB, C, mask), None


def lti_scan(u: Tensor, x0: Tensor, dA: Tensor, dB: Tensor, C: Tensor,
             mask: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """The diagonal recurrence of ``longseq.ops.lti_recurrence.lti_scan``: u: (B, H, T) real, x0: (B, H, M),
    dA, dB, C: (H, M), mask: bool (B, T) -> (y: (B, H, T) in u's dtype, the final state (B, H, M)); None when the
    compiled path does not apply (``_lti_args_ok``)."""
    if not _lti_args_ok(u, x0, dA, dB, C, mask):
        return None
    ext = extension(u, x0, dA, dB, C, mask)
    if ext is None:
        return None
    v = u.to(REAL_OF[x0.dtype])
    if _tracked(v, x0, dA, dB, C):
        y, x_last = _LTIScan.apply(ext, v, x0, dA, dB, C, mask)
    else:
        y, x_last = ext.lti_scan_forward(v, x0, dA, dB, C, mask)
    return y.to(u.dtype), x_last


# ------------------------------------------------------------------------------------------------ SSD (Mamba-2)


class _SSDScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext: ModuleType, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                z: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool,
                initial_states: Tensor | None) -> tuple[Tensor, Tensor]:
        ctx.ext, ctx.dt_softplus = ext, dt_softplus
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states)
        return tuple(ext.ssd_scan_forward(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states))

    @staticmethod
    def backward(ctx, gy: Tensor, gstate: Tensor) -> tuple[Tensor | None, ...]:
        x, dt, A, B, C, D, z, dt_bias, initial_states = ctx.saved_tensors
        gx, gdt, gA, gB, gC, gD, gz, gbias, gs0 = ctx.ext.ssd_scan_backward(
            gy, gstate, x, dt, A, B, C, D, z, dt_bias, ctx.dt_softplus, initial_states)
        return None, gx, gdt, gA, gB, gC, gD, gz, gbias, None, gs0


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, D: Tensor | None, z: Tensor | None,
             dt_bias: Tensor | None, dt_softplus: bool, initial_states: Tensor | None,
             dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """Mamba-2's recurrence in ``longseq.ops.ssd``'s layout (x: (B, L, H, P), dt: (B, L, H), A: (H,), B, C:
    (B, L, G, N), D: (H,) or (H, P), z: (B, L, H, P), dt_bias: (H,), initial_states: (B, H, P, N); shapes checked by
    the op), computed in ``dtype`` (the op's compute dtype, float32 or float64) -> (y: (B, L, H, P) in x's dtype,
    the final state in ``dtype``); None when the compiled path does not apply."""
    if dtype not in REAL:
        return None
    ext = extension(x, dt, A, B, C, D, z, dt_bias, initial_states)
    if ext is None:
        return None
    args = [None if t is None else t.to(dtype) for t in (x, dt, A, B, C, D, z, dt_bias)]
    state = None if initial_states is None else initial_states.to(dtype)
    if _tracked(*args, state):
        y, final = _SSDScan.apply(ext, *args, dt_softplus, state)
    else:
        y, final = ext.ssd_scan_forward(*args, dt_softplus, state)
    return y.to(x.dtype), final


# ------------------------------------------------------------------------------------------------ short conv


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext: ModuleType, x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None,
                mask: Tensor | None, silu: bool, dilation: int) -> tuple[Tensor, Tensor]:
        ctx.ext, ctx.silu, ctx.dilation = ext, silu, dilation
        ctx.save_for_backward(x, weight, bias, state, mask)
        return tuple(ext.conv_forward(x, weight, bias, state, mask, silu, dilation))

    @staticmethod
    def backward(ctx, gy: Tensor, gfinal: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, state, mask = ctx.saved_tensors
        gx, gw, gb, gs = ctx.ext.conv_backward(gy, gfinal, x, weight, bias, state, mask, ctx.silu, ctx.dilation)
        return None, gx, gw, gb, gs, None, None, None


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None,
                  mask: Tensor | None, activation: str | None, dilation: int) -> tuple[Tensor, Tensor] | None:
    """``longseq.ops.short_conv.causal_conv1d`` (arguments checked by the op): x: (B, D, L), weight: (D, W), bias:
    (D,), initial_state: (B, D, (W-1)·dilation), mask: bool (B, L) -> (y: (B, D, L), the final state); None unless
    every tensor has x's dtype, float32 or float64."""
    if x.dtype not in REAL or not _one_dtype(x.dtype, weight, bias, initial_state):
        return None
    ext = extension(x, weight, bias, initial_state, mask)
    if ext is None:
        return None
    silu = activation == "silu"
    if _tracked(x, weight, bias, initial_state):
        return _CausalConv.apply(ext, x, weight, bias, initial_state, mask, silu, dilation)
    y, final = ext.conv_forward(x, weight, bias, initial_state, mask, silu, dilation)
    return y, final


# ------------------------------------------------------------------------------------------------ fused decode steps

LTI_OUTPUTS = {"none": 0, "silu": 1, "glu": 2}


def lti_block_step(x: Tensor, u_t: Tensor, dA: Tensor, dB: Tensor, C: Tensor, D: Tensor, mask_t: Tensor | None,
                   output: str, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """``longseq.ops.lti_recurrence.lti_block_step`` (shapes checked by the op) in one call; None under autograd,
    for a dense dA, or unless x, dA, dB, C share one dtype whose real counterpart u_t, D, weight and bias have."""
    bound = BoundLTIBlockStep.bind(dA, dB, C, D, output, weight, bias)
    return None if bound is None else bound(x, u_t, mask_t)


class BoundLTIBlockStep:
    """``lti_block_step``'s compiled call with its parameters bound: decoding calls it once per token with the same
    step matrices and output layer, so their dtypes and devices are checked once (``bind``) and a call checks only
    the token's own tensors. Complex step matrices are bound as their real views (H, M, 2); a state may then be
    passed as the real view (B, H, M, 2) that states store, and comes back in that form (no view as complex and back
    per token). The extension is looked up on every call: ``LONGSEQ_KERNELS`` may change between calls."""

    __slots__ = ("D", "bias", "dtype", "kind", "real", "steps", "weight")

    def __init__(self, steps: list[Tensor], D: Tensor, kind: int, weight: Tensor | None, bias: Tensor | None,
                 dtype: torch.dtype) -> None:
        self.steps, self.D, self.kind, self.weight, self.bias = steps, D, kind, weight, bias
        self.dtype, self.real = dtype, D.dtype  # the state's dtype (complex for complex modes), its real counterpart

    @classmethod
    def bind(cls, dA: Tensor, dB: Tensor, C: Tensor, D: Tensor, output: str, weight: Tensor | None,
             bias: Tensor | None) -> BoundLTIBlockStep | None:
        """None when these parameters can never take the compiled path: a dense dA (S4), mixed dtypes, a tensor
        off the CPU."""
        real = REAL_OF.get(dA.dtype)
        if (real is None or dA.dim() != 2 or not _one_dtype(dA.dtype, dB, C) or not _one_dtype(real, D, weight, bias)
                or any(t is not None and not t.is_cpu for t in (dA, dB, C, D, weight, bias))):
            return None
        steps = [t.resolve_conj().contiguous() for t in (dA, dB, C)]  # as the kernel reads them, once
        if dA.is_complex():
            steps = [torch.view_as_real(t) for t in steps]
        return cls(steps, D, LTI_OUTPUTS[output], weight, bias, dA.dtype)

    def __call__(self, x: Tensor, u_t: Tensor, mask_t: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """x: (B, H, M) of the parameters' dtype or, for complex modes, its real view (B, H, M, 2); u_t: (B, H)
        -> (out: (B, H), the new state in x's form); None under autograd, off the CPU or with kernels off."""
        complex_state = x.is_complex()
        if (x.dtype != (self.dtype if complex_state else self.real) or u_t.dtype != self.real
                or not (x.is_cpu and u_t.is_cpu) or (mask_t is not None and not mask_t.is_cpu)):
            return None
        if torch.is_grad_enabled() and _tracked(x, u_t, *self.steps, self.D, self.weight, self.bias):
            return None
        ext = kernels.load(NAME)
        if ext is None:
            return None
        state = torch.view_as_real(x.resolve_conj()) if complex_state else x
        y, new = ext.lti_block_step(state, u_t, *self.steps, self.D, mask_t, self.kind, self.weight, self.bias)
        return y, (torch.view_as_complex(new) if complex_state else new)


def ssd_block_step(zxbcdt: Tensor, conv_state: Tensor, state: Tensor, *, conv_weight: Tensor,
                   conv_bias: Tensor | None, dt_bias: Tensor, A: Tensor, D: Tensor | None, norm_weight: Tensor,
                   norm_eps: float, norm_group_size: int, ngroups: int,
                   mask_t: Tensor | None) -> tuple[Tensor, Tensor, Tensor] | None:
    """``longseq.ops.ssd.ssd_block_step`` (shapes checked by the op) in one call; None under autograd or unless
    every tensor has zxbcdt's dtype, float32 or float64."""
    tensors = (zxbcdt, conv_state, state, conv_weight, conv_bias, dt_bias, A, D, norm_weight)
    if zxbcdt.dtype not in REAL or not _one_dtype(zxbcdt.dtype, *tensors) or _tracked(*tensors):
        return None
    ext = extension(*tensors, mask_t)
    if ext is None:
        return None
    y, conv, ssm = ext.ssd_block_step(zxbcdt, conv_state, state, conv_weight, conv_bias, dt_bias, A, D, norm_weight,
                                      norm_eps, norm_group_size, ngroups, mask_t)
    return y, conv, ssm


def mamba2_block_step(u_t: Tensor, conv_state: Tensor, state: Tensor, *, in_proj_weight: Tensor,
                      in_proj_bias: Tensor | None, out_proj_weight: Tensor, out_proj_bias: Tensor | None,
                      conv_weight: Tensor, conv_bias: Tensor | None, dt_bias: Tensor, A: Tensor, D: Tensor | None,
                      norm_weight: Tensor, norm_eps: float, norm_group_size: int, ngroups: int,
                      mask_t: Tensor | None) -> tuple[Tensor, Tensor, Tensor] | None:
    """``longseq.ops.mamba_step.mamba2_block_step`` in one call (the projections too); None under autograd or
    autocast, or unless every tensor has u_t's dtype, float32 or float64."""
    tensors = (u_t, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, conv_state, state, conv_weight,
               conv_bias, dt_bias, A, D, norm_weight)
    if (u_t.dtype not in REAL or torch.is_autocast_enabled("cpu") or not _one_dtype(u_t.dtype, *tensors)
            or _tracked(*tensors)):
        return None
    ext = extension(*tensors, mask_t)
    if ext is None:
        return None
    y, conv, ssm = ext.mamba2_block_step(u_t, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                                         conv_state, state, conv_weight, conv_bias, dt_bias, A, D, norm_weight,
                                         norm_eps, norm_group_size, ngroups, mask_t)
    return y, conv, ssm
