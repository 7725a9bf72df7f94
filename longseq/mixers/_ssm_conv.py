"""Linear time-invariant state-space mixers (S4, S4D): a convolution in parallel mode, a recurrence in stream mode.

The layer is the reference's S4Block: y = GLU(Linear(GELU(K * u + D u))), one kernel K per channel. An *SSM*
module (``S4DKernel``, ``S4Kernel``) owns the state-space parameters and gives ``kernel(L) -> (H, L)`` and its
discretised ``recurrence() -> (dA, dB, C)`` (``longseq.ops.lti_recurrence``) and ``state_modes() -> (M, complex?)``;
this base does the rest:

- ``causal_self``: ``fft_conv`` with the causal kernel; streaming and decoding run the recurrence from the state.
- ``noncausal_self``: a second SSM gives the backward kernel, combined in S4's convention
  (``fft_conv_bidirectional``: lag 0 once, in the forward kernel).
- Masks: convolution counts positions, so a masked batch is packed (each row's valid tokens first,
  ``longseq.ops.pack``), convolved and unpacked; in the recurrence a masked step is a no-op.
- The kernel is computed for each input length, so the layer has no length bound of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from longseq.mixers.base import Mixer, Pattern
from longseq.ops.fft_conv import fft_conv, fft_conv_bidirectional
from longseq.ops.lti_recurrence import lti_scan, lti_step
from longseq.ops.pack import pack, unpack
from longseq.state import State


@dataclasses.dataclass
class LTIState(State):
    """x: (B, H, M, 2) the complex state as a real view (or (B, H, M) for real modes); length: tokens so far."""

    x: Tensor
    length: int = 0


class SSMConvMixer(Mixer):
    """Base of S4 and S4D; a subclass calls ``super().__init__`` then ``self.build_layer(make_ssm)``."""

    @classmethod
    def supported_patterns(cls, **hyper: object) -> frozenset[Pattern]:
        return frozenset({Pattern.CAUSAL_SELF, Pattern.NONCAUSAL_SELF})

    def build_layer(self, make_ssm: Callable[[], nn.Module]) -> None:
        h = self.d_model
        self.ssms = nn.ModuleList(make_ssm() for _ in range(1 if self.pattern.is_causal else 2))
        self.D = nn.Parameter(torch.randn(h))
        self.output = nn.Sequential(nn.GELU(), nn.Linear(h, 2 * h), nn.GLU(dim=-1))
        self._recurrence_cache: tuple[tuple[tuple[int, int], ...], tuple[Tensor, Tensor, Tensor]] | None = None

    def _recurrence(self) -> tuple[Tensor, Tensor, Tensor]:
        """The step matrices of the causal SSM. Discretising S4's dense matrices costs far more than a step, so
        outside autograd they are computed once and reused while the parameters are unchanged (keyed on each
        parameter's storage and in-place version counter, which an optimizer step or a cast changes); under
        autograd they are recomputed so that gradients reach the parameters."""
        ssm = self.ssms[0]
        params = list(ssm.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return ssm.recurrence()
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._recurrence_cache is None or self._recurrence_cache[0] != key:
            self._recurrence_cache = (key, ssm.recurrence())
        return self._recurrence_cache[1]

    def _finish(self, y: Tensor, mask: Tensor | None) -> Tensor:
        y = self.output(y)
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        u = (x if mask is None else pack(x, mask)).mT  # (B, H, L)
        kernels = [ssm.kernel(u.shape[-1]) for ssm in self.ssms]
        if self.pattern.is_causal:
            y = fft_conv(u, kernels[0], D=self.D)
        else:
            y = fft_conv_bidirectional(u, kernels[0], kernels[1], D=self.D)
        y = y.mT if mask is None else unpack(y.mT, mask)
        return self._finish(y, mask)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        modes, is_complex = self.ssms[0].state_modes()
        dtype = torch.promote_types(self.D.dtype, torch.float32)  # recurrent states in float32 at least
        shape = (batch_size, self.d_model, modes, 2) if is_complex else (batch_size, self.d_model, modes)
        return LTIState(x=torch.zeros(shape, device=self.D.device, dtype=dtype))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, LTIState, x.shape[1])
        y, new = lti_scan(x.mT, _complex(state.x), *self._recurrence(), mask=mask)
        return self._stream_output(y.mT, x, mask), LTIState(x=_real(new), length=state.length + x.shape[1])

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, LTIState, 1)
        y, new = lti_step(_complex(state.x), x_t, *self._recurrence(), mask_t)
        out = self._stream_output(y[:, None], x_t[:, None], None if mask_t is None else mask_t[:, None])
        return out[:, 0], LTIState(x=_real(new), length=state.length + 1)

    def _stream_output(self, y: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
        """The recurrence's y: (B, T, H) -> the layer's output, with the skip D u the convolution adds itself."""
        return self._finish(y + self.D * x, mask)


def _at_least_float32(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def as_complex(x: Tensor) -> Tensor:
    """A complex parameter from its real view (..., 2); half-precision views are read in float32 (there is no
    bfloat16 complex type, and kernels are computed in float32 at least anyway)."""
    return torch.view_as_complex(_at_least_float32(x))


def complex_from_parts(real: Tensor, imag: Tensor) -> Tensor:
    """real + i imag, in float32 at least (as ``as_complex``)."""
    return torch.complex(_at_least_float32(real), _at_least_float32(imag))


def _complex(x: Tensor) -> Tensor:
    return torch.view_as_complex(x) if x.dim() == 4 else x


def _real(x: Tensor) -> Tensor:
    return torch.view_as_real(x) if x.is_complex() else x
