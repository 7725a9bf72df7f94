"""S4 (Gu et al., 2022): a diagonal-plus-low-rank state-space layer initialised from HiPPO-LegS.

Each channel h is the ODE x' = A x + B u, y = C x with A = diag(Λ) - P P* (the normal-plus-low-rank form of
HiPPO-LegS, ``longseq.ops.hippo.dplr_legs``), discretised bilinearly with a learned step dt_h. In parallel mode
the layer convolves with the kernel from the truncated generating function (Cauchy sums and Woodbury at the roots
of unity, ``s4_kernel``); in stream and step modes it runs the recurrence with the dense step matrices rewritten
over real coordinates (``real_dense_form``; O(N²) per channel and token). C is C̄, the recurrence's own output
matrix, so the layer is not tied to one length (the reference learns C̃ = C̄(I - Ā^L) for a fixed L). The layer
around it is the reference's block (``_ssm_conv``); as the reference trains it, dt, Λ, P and B use their own
learning rate (``ssm_lr``) and no weight decay. Every channel has its own copy of (Λ, P, B) (the reference's
n_ssm = H).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longseq.mixers._ssm_conv import SSMConvMixer, as_complex, complex_from_parts
from longseq.mixers.base import InvalidHyper, Pattern, PositiveFloat, PositiveInt, check_ordered
from longseq.mixers.registry import register
from longseq.modules.optim import set_optim
from longseq.modules.ssm_init import log_uniform
from longseq.ops.hippo import dplr_legs
from longseq.ops.lti_recurrence import real_dense_form
from longseq.ops.ssm_kernel import s4_kernel, s4_recurrence


def _complex_parameter(value: Tensor, shape: tuple[int, int], **optim: float) -> nn.Parameter:
    """A complex (H, M) parameter stored as its real view (H, M, 2), so that .double() and .to() keep it."""
    p = nn.Parameter(torch.view_as_real(value.to(torch.complex64).expand(shape).clone()))
    return set_optim(p, **optim) if optim else p


class S4Kernel(nn.Module):
    """The state-space part of one direction: log dt: (H,), Λ = -exp(log_Lambda_real) + i Lambda_imag, P, B, C:
    (H, M) complex, M = d_state / 2."""

    def __init__(self, d_model: int, *, d_state: int, dt_min: float, dt_max: float, ssm_lr: float) -> None:
        super().__init__()
        lam, p, b, _ = dplr_legs(d_state)
        shape = (d_model, d_state // 2)
        optim = {"lr": ssm_lr, "weight_decay": 0.0}
        self.log_dt = set_optim(nn.Parameter(log_uniform(d_model, dt_min, dt_max).log()), **optim)
        self.log_Lambda_real = set_optim(nn.Parameter((-lam.real).log().float().expand(shape).clone()), **optim)
        self.Lambda_imag = set_optim(nn.Parameter(lam.imag.float().expand(shape).clone()), **optim)
        self.P = _complex_parameter(p, shape, **optim)
        self.B = _complex_parameter(b, shape, **optim)
        self.C = _complex_parameter(torch.randn(shape, dtype=torch.complex64), shape)

    def _params(self) -> tuple[Tensor, ...]:
        lam = complex_from_parts(-self.log_Lambda_real.exp(), self.Lambda_imag)
        p, b, c = (as_complex(t) for t in (self.P, self.B, self.C))
        return self.log_dt.exp(), lam, p, b, c

    def kernel(self, length: int) -> Tensor:
        return s4_kernel(*self._params(), length)

    def recurrence(self) -> tuple[Tensor, Tensor, Tensor]:
        return real_dense_form(*s4_recurrence(*self._params()))

    def state_modes(self) -> tuple[int, bool]:
        return 2 * self.log_Lambda_real.shape[1], False  # the real coordinates of the kept modes


@register("s4")
class S4(SSMConvMixer):
    complexity = "O(L log L · d + L d N) parallel, O(d N²) per token"
    state_formula = "d·d_state (d_state/2 complex modes; their conjugates implicit)"
    test_hypers = ({"d_state": 8},)

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        d_state: PositiveInt = 64,
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 0.1,
        ssm_lr: PositiveFloat = 1e-3,
    ) -> None:
        """d_state: N, the HiPPO-LegS state size per channel (even). Non-causal: a second set of SSM parameters
        gives the backward kernel."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        if d_state % 2:
            raise InvalidHyper(f"mixer 's4': d_state={d_state} must be even (complex modes come in conjugate pairs)")
        check_ordered("s4", "dt_min", dt_min, "dt_max", dt_max)
        self.d_state = d_state
        self.build_layer(lambda: S4Kernel(d_model, d_state=d_state, dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr))

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * self.d_state
