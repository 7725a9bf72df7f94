"""Linear time-invariant state-space layers (S4, S4D, MEGA's EMA): a convolution in parallel mode, a recurrence
in stream mode.

The parallel mode is ``KernelConvMixer``'s (``_kernel_conv``): fft_conv with the SSM's kernel, two SSMs in
``noncausal_self``, masked batches packed. An *SSM* kernel module (``S4DKernel``, ``S4Kernel``, ``EMAKernel``)
gives ``kernel(L) -> (H, L)`` and, besides, its discretised ``recurrence() -> (dA, dB, C)``
(``longseq.ops.lti_recurrence``) and ``state_modes() -> (M, complex?)``; streaming and decoding run that
recurrence from the state, in which a masked step is a no-op. The kernel is computed for each input length, so the
layer has no length bound of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from longseq.mixers._kernel_conv import KernelConvMixer
from longseq.modules.param_cache import ParamCache
from longseq.ops.lti_recurrence import BlockOutput, LTIBlockStep, lti_scan
from longseq.state import State


@dataclasses.dataclass
class LTIState(State):
    """x: (B, H, M, 2) the complex state as a real view (or (B, H, M) for real modes); length: tokens so far."""

    x: Tensor
    length: int = 0


@dataclasses.dataclass(frozen=True)
class _DecodePlan:
    """What a layer's stream and step modes derive from its parameters: the step matrices (dA, dB, C) and the
    token update bound to them, D and the output layer (``finish``: the output layer is not one ``LTIBlockStep``
    knows, and ``_step`` applies it)."""

    recurrence: tuple[Tensor, Tensor, Tensor]
    step: LTIBlockStep
    finish: bool


class SSMConvMixer(KernelConvMixer):
    """Base of S4, S4D and EMA; a subclass calls ``super().__init__`` then ``self.build_layer(make_ssm)``."""

    def build_layer(self, make_kernel: Callable[[], nn.Module], *, output: nn.Module | None = None) -> None:
        super().build_layer(make_kernel, output=output)
        self._plan_cache: ParamCache[_DecodePlan] = ParamCache()

    def _plan(self) -> _DecodePlan:
        """The layer's ``_DecodePlan``. Discretising S4's dense matrices costs far more than a step, and so, at
        d_model 256, do the Python checks around one step: outside autograd the plan is made once and reused while
        every parameter and submodule of the layer is unchanged (``ParamCache.get_for``: an optimizer step,
        ``load_state_dict``, a cast or a replaced submodule makes a new one; a plain attribute such as the GELU's
        ``approximate`` is read when the plan is made). Under autograd it is made on every call."""
        return self._plan_cache.get_for(self, self._make_plan)

    def _make_plan(self) -> _DecodePlan:
        dA, dB, C = self.kernels[0].recurrence()
        form = self._output_form()
        output, weight, bias = ("none", None, None) if form is None else form
        step = LTIBlockStep(dA, dB, C, self.D, output=output, weight=weight, bias=bias)
        return _DecodePlan(recurrence=(dA, dB, C), step=step, finish=form is None)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        modes, is_complex = self.kernels[0].state_modes()
        dtype = torch.promote_types(self.D.dtype, torch.float32)  # recurrent states in float32 at least
        shape = (batch_size, self.d_model, modes, 2) if is_complex else (batch_size, self.d_model, modes)
        return LTIState(x=torch.zeros(shape, device=self.D.device, dtype=dtype))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, LTIState, x.shape[1])
        y, new = lti_scan(x.mT, _complex(state.x), *self._plan().recurrence, mask=mask)
        return self._stream_output(y.mT, x, mask), LTIState(x=_real(new), length=state.length + x.shape[1])

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        """One op for the recurrence, the skip and (when it is one ``lti_block_step`` knows) the output layer, on the
        state as stored (complex modes as their real view): a single compiled call per token when kernels are
        available."""
        state = self._check_stream(state, LTIState, 1)
        plan = self._plan()
        y, new = plan.step(state.x, x_t, mask_t)
        if plan.finish:
            y = self._finish(y, mask_t)
        return y, LTIState(x=new, length=state.length + 1)

    def _output_form(self) -> tuple[BlockOutput, Tensor | None, Tensor | None] | None:
        """The output layer as ``lti_block_step``'s (output, weight, bias): SiLU (EMA), GELU -> Linear -> GLU
        (``glu_output``, S4's block); None for any other layer, which ``_step`` then applies itself."""
        out = self.output
        if type(out) is nn.SiLU:
            return "silu", None, None
        if type(out) is nn.Sequential and len(out) == 3:
            gelu, linear, glu = out
            if (type(gelu) is nn.GELU and gelu.approximate == "none" and type(linear) is nn.Linear
                    and type(glu) is nn.GLU and glu.dim == -1):
                return "glu", linear.weight, linear.bias
        return None

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
