"""The step mode of linear time-invariant state-space layers (S4, S4D): x_k = dA x_{k-1} + dB u_k, y_k = Re(C x_k).

The convolution mode (``longseq.ops.ssm_kernel`` + ``fft_conv``) computes a whole sequence from a zero state; this
is the recurrence that continues from any state, one token at a time, for streaming and decoding. Its oracle is
the convolution mode itself (tests/ops/test_ops_lti_recurrence.py): the same K_l = Re(C dA^l dB).

Two shapes of dA, one function:
- diagonal (S4D): dA, dB, C: (H, M) complex (or real for real modes), the state x: (B, H, M); y = f·Re(C x),
  f = 2 for complex modes (their conjugate partners are implicit), 1 for real modes.
- dense real (S4): dA: (H, N, N), dB, C: (H, N) real, the state x: (B, H, N) real; y = C x. S4's step matrices
  live in the conj-augmented complex space, where the state of a real system is [z, conj z]; ``real_dense_form``
  rewrites them over the real coordinates of the kept half z (N = 2M reals), which is as exact and, on a CPU, an
  order of magnitude faster per token than complex batched matrix-vector products.

A masked step (mask False) leaves the state unchanged and outputs 0.

The diagonal form runs as a compiled kernel (``longseq.kernels.recurrence``: one C++ call per step or per chunk,
forward and backward) when kernels are available and the state and step matrices share one dtype on the CPU; the
loop below is the plain path and the compiled path's oracle. ``lti_block_step`` is a whole S4-style block's token
update (recurrence, skip, output layer), one compiled call when decoding; ``LTIBlockStep`` is the same with its
parameters bound once, for a decoder that calls it per token.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.kernels import recurrence


def lti_step(x: Tensor, u_t: Tensor, dA: Tensor, dB: Tensor, C: Tensor, mask_t: Tensor | None = None, *,
             workspace: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token: x: (B, H, M) state, u_t: (B, H) real -> (y_t: (B, H) real, new state). Functional: the arguments
    are not modified. workspace: for a dense dA outside autograd, a (B, H, N, N) buffer reused across tokens, so a
    long prefill allocates nothing per token."""
    compiled = recurrence.lti_scan(u_t[..., None], x, dA, dB, C, None if mask_t is None else mask_t[:, None])
    if compiled is not None:
        return compiled[0][..., 0], compiled[1]
    return _step(x, u_t, dA, dB, C, mask_t, workspace)


def _step(x: Tensor, u_t: Tensor, dA: Tensor, dB: Tensor, C: Tensor, mask_t: Tensor | None,
          workspace: Tensor | None) -> tuple[Tensor, Tensor]:
    """``lti_step``'s plain path."""
    u = u_t.to(dA.real.dtype)[..., None]
    if dA.dim() == 3:  # a batched matrix-vector product as multiply-and-sum: far faster than bmm on a CPU
        products = dA * x[..., None, :] if workspace is None else torch.mul(dA, x[..., None, :], out=workspace)
        new = products.sum(-1) + dB * u
    else:
        new = dA * x + dB * u
    y = (2.0 if x.is_complex() else 1.0) * (C * new).sum(-1).real
    if mask_t is not None:
        new = torch.where(mask_t[:, None, None], new, x)
        y = y.masked_fill(~mask_t[:, None], 0.0)
    return y.to(u_t.dtype), new


def lti_scan(u: Tensor, x0: Tensor, dA: Tensor, dB: Tensor, C: Tensor,
             mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """u: (B, H, T) real, x0: (B, H, M) -> (y: (B, H, T), the state after the last token): ``lti_step`` per token."""
    compiled = recurrence.lti_scan(u, x0, dA, dB, C, mask)
    if compiled is not None:
        return compiled
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in (u, x0, dA, dB, C))
    dense = dA.dim() == 3
    workspace = dA.new_empty(x0.shape[0], *dA.shape) if dense and not tracked else None
    ys, x = [], x0
    for t in range(u.shape[-1]):
        y_t, x = _step(x, u[..., t], dA, dB, C, None if mask is None else mask[:, t], workspace)
        ys.append(y_t)
    return torch.stack(ys, dim=-1), x


BlockOutput = Literal["none", "silu", "glu"]


def lti_block_step(x: Tensor, u_t: Tensor, dA: Tensor, dB: Tensor, C: Tensor, D: Tensor, mask_t: Tensor | None = None,
                   *, output: BlockOutput = "none", weight: Tensor | None = None,
                   bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token of an S4-style block (S4, S4D, MEGA's EMA): ``lti_step``, the skip D: (H,), then the block's output
    layer -> (out: (B, H), new state); a masked row keeps its state and outputs 0.

    output: "none" (y + D u), "silu" (EMA: SiLU(y + D u)) or "glu" (S4's block: GLU(Linear(GELU(y + D u))) with
    weight: (2H, H), bias: (2H,) or None). For decoding: a diagonal dA outside autograd runs as one compiled call;
    otherwise the same function as ``lti_step`` and the layers in PyTorch. A decoder calling it per token with the
    same parameters binds them once instead (``LTIBlockStep``)."""
    _check_block(x, u_t, dA, dB, C, D, output, weight, bias)
    compiled = recurrence.lti_block_step(x, u_t, dA, dB, C, D, mask_t, output, weight, bias)
    if compiled is not None:
        return compiled
    return _block_plain(x, u_t, dA, dB, C, D, mask_t, output, weight, bias)


def _block_plain(x: Tensor, u_t: Tensor, dA: Tensor, dB: Tensor, C: Tensor, D: Tensor, mask_t: Tensor | None,
                 output: str, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """``lti_block_step``'s plain path."""
    y, new = lti_step(x, u_t, dA, dB, C, mask_t)
    y = y + D * u_t
    if output == "silu":
        y = F.silu(y)
    elif output == "glu":
        y = F.glu(F.linear(F.gelu(y), weight, bias), dim=-1)
    return (y if mask_t is None else y.masked_fill(~mask_t[:, None], 0.0)), new


class LTIBlockStep:
    """``lti_block_step`` with dA, dB, C, D and the output layer bound: their shapes and dtypes are checked once, so
    that a token pays for the checks of its own tensors and one call (one compiled call when kernels are available);
    the same function as ``lti_block_step`` on the same arguments, bit for bit.

    A complex state may be passed as its real view x: (B, H, M, 2) (as states store it; ``torch.view_as_real``), and
    the new state then comes back as a real view too."""

    def __init__(self, dA: Tensor, dB: Tensor, C: Tensor, D: Tensor, *, output: BlockOutput = "none",
                 weight: Tensor | None = None, bias: Tensor | None = None) -> None:
        if D.dim() != 1:
            raise ValueError(f"LTIBlockStep: D must have shape (H,), got {tuple(D.shape)}")
        self._state_shape = (D.shape[0], dA.shape[-1])  # x's shape after the batch: (H, M)
        _check_parameters(self._state_shape, dA, dB, C, output, weight, bias)
        self.dA, self.dB, self.C, self.D, self.output, self.weight, self.bias = dA, dB, C, D, output, weight, bias
        self._compiled = recurrence.BoundLTIBlockStep.bind(dA, dB, C, D, output, weight, bias)

    def __call__(self, x: Tensor, u_t: Tensor, mask_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, H, M) or its real view (B, H, M, 2), u_t: (B, H), mask_t: bool (B,) -> (out: (B, H), new state in
        x's form)."""
        shape = x.shape
        view = len(shape) == 4
        if (len(shape) not in (3, 4) or shape[1:3] != self._state_shape or u_t.shape != shape[:2]
                or (view and (shape[3] != 2 or not self.dA.is_complex()))):
            h, m = self._state_shape
            raise ValueError(f"LTIBlockStep: x must have shape (B, H, M) = (B, {h}, {m}) (or, for complex modes, its "
                             f"real view (B, {h}, {m}, 2)) and u_t (B, H); got x {tuple(shape)}, u_t "
                             f"{tuple(u_t.shape)}")
        if self._compiled is not None:
            compiled = self._compiled(x, u_t, mask_t)
            if compiled is not None:
                return compiled
        y, new = _block_plain(torch.view_as_complex(x) if view else x, u_t, self.dA, self.dB, self.C, self.D, mask_t,
                              self.output, self.weight, self.bias)
        return y, (torch.view_as_real(new) if view else new)


def _check_block(x: Tensor, u_t: Tensor, dA: Tensor, dB: Tensor, C: Tensor, D: Tensor, output: str,
                 weight: Tensor | None, bias: Tensor | None) -> None:
    """``lti_block_step``'s shapes: x: (B, H, M), u_t: (B, H), D: (H,), and ``_check_parameters``."""
    if x.dim() != 3 or u_t.shape != x.shape[:2] or D.shape != x.shape[1:2]:
        raise ValueError(f"lti_block_step: x must have shape (B, H, M), u_t (B, H) and D (H,); got x "
                         f"{tuple(x.shape)}, u_t {tuple(u_t.shape)}, D {tuple(D.shape)}")
    _check_parameters(x.shape[1:], dA, dB, C, output, weight, bias)


def _check_parameters(state: tuple[int, int], dA: Tensor, dB: Tensor, C: Tensor, output: str, weight: Tensor | None,
                      bias: Tensor | None) -> None:
    """For a state (B, H, M) (state = (H, M)): a diagonal dA, dB and C: (H, M) (dense: the shapes ``lti_step``
    takes); weight: (2H, H), bias: (2H,) or None for output="glu"."""
    if output not in ("none", "silu", "glu"):
        raise ValueError(f"lti_block_step: output={output!r} is not allowed; allowed: 'none', 'silu', 'glu'")
    h = state[0]
    if dA.dim() == 2 and not dA.shape == dB.shape == C.shape == state:
        raise ValueError(f"lti_block_step: a diagonal dA, dB and C must have shape (H, M) = {tuple(state)}, "
                         f"got {tuple(dA.shape)}, {tuple(dB.shape)}, {tuple(C.shape)}")
    if output == "glu" and (weight is None or weight.shape != (2 * h, h)
                            or (bias is not None and bias.shape != (2 * h,))):
        got = None if weight is None else tuple(weight.shape), None if bias is None else tuple(bias.shape)
        raise ValueError(f"lti_block_step: output='glu' needs weight (2H, H) = {(2 * h, h)} and bias (2H,) or None, "
                         f"got (weight, bias) shapes {got}")


def real_dense_form(dA: Tensor, dB: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """S4's conj-augmented step matrices dA: (H, N, N), dB, C: (H, N) complex (N = 2M, the kept modes first, then
    their conjugates, y = Re(C z)) -> the same system over the real coordinates of the kept half,
    x = (Re z_0, Im z_0, Re z_1, Im z_1, ...): R: (H, N, N), b: (H, N), c: (H, N) real, x' = R x + b u, y = c x.

    With z = a + i b for the kept half and P, Q the kept rows' blocks acting on z and on conj z:
    z' = (P + Q) a + i (P - Q) b + dB u, so Re z' = Re(P+Q) a - Im(P-Q) b, Im z' = Im(P+Q) a + Re(P-Q) b; and
    y = Re(C_kept z) + Re(C_conj conj z) = 2 Re(C_kept z) for a real system (C_conj = conj C_kept)."""
    m = dA.shape[-1] // 2
    p, q = dA[:, :m, :m], dA[:, :m, m:]
    plus, minus = p + q, p - q
    real = torch.stack([torch.stack([plus.real, -minus.imag], dim=-1),
                        torch.stack([plus.imag, minus.real], dim=-1)], dim=-3)  # (H, M, 2, M, 2)
    h = dA.shape[0]
    kept_b, kept_c = dB[:, :m], C[:, :m]
    b = torch.stack([kept_b.real, kept_b.imag], dim=-1).reshape(h, 2 * m)
    c = (2 * torch.stack([kept_c.real, -kept_c.imag], dim=-1)).reshape(h, 2 * m)
    return real.reshape(h, 2 * m, 2 * m), b, c
