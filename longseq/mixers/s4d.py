"""S4D (Gu et al., 2022): a diagonal state-space layer, its kernel a Vandermonde product.

Each channel h is the ODE x' = diag(λ) x + u, y = 2 Re(C x), discretised with a learned step dt_h (ZOH or
bilinear). In parallel mode the layer convolves with K_l = 2 Re sum_n C_n dB_n dA_n^l (``s4d_kernel``); in stream
and step modes it runs the recurrence. The layer around it is the reference's block (``_ssm_conv``).

Initialisations of λ (``init``): "lin" (S4D-Lin, -½ + iπn), "inv" (S4D-Inv), "legs" (the diagonal of HiPPO-LegS's
normal-plus-low-rank form, with its input vector folded into C), "real" (S4D-Real, -(n+1): d_state real modes,
Mamba's choice). As the reference trains it, dt and λ use their own learning rate (``ssm_lr``) and no weight decay.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from longseq.mixers._ssm_conv import SSMConvMixer, as_complex, complex_from_parts
from longseq.mixers.base import InvalidHyper, Pattern, PositiveFloat, PositiveInt, check_ordered
from longseq.mixers.registry import register
from longseq.modules.optim import set_optim
from longseq.modules.ssm_init import log_uniform
from longseq.ops.hippo import dplr_legs, s4d_inv, s4d_lin, s4d_real
from longseq.ops.ssm_kernel import s4d_kernel, s4d_recurrence

S4DInit = Literal["lin", "inv", "legs", "real"]


def initial_modes(init: str, d_state: int) -> tuple[Tensor, Tensor]:
    """(λ, b): the diagonal and the input vector of an S4D initialisation; d_state/2 complex modes, or d_state real
    ones for "real"."""
    if init == "real":
        lam = s4d_real(d_state)
        return lam, torch.ones_like(lam)
    if init == "legs":
        lam, _, b, _ = dplr_legs(d_state)
        return lam, b
    lam = s4d_lin(d_state // 2) if init == "lin" else s4d_inv(d_state // 2)
    return lam, torch.ones_like(lam)


class S4DKernel(nn.Module):
    """The state-space part of one direction: log dt: (H,), λ = -exp(log_A_real) + i A_imag: (H, M), C: (H, M)."""

    def __init__(self, d_model: int, *, d_state: int, init: str, discretization: str, dt_min: float, dt_max: float,
                 ssm_lr: float) -> None:
        super().__init__()
        lam, b = initial_modes(init, d_state)
        self.discretization = discretization
        self.log_dt = set_optim(nn.Parameter(log_uniform(d_model, dt_min, dt_max).log()), lr=ssm_lr, weight_decay=0.0)
        shape = (d_model, lam.shape[0])
        real = (-lam.real).log().float().expand(shape).clone()
        self.log_A_real = set_optim(nn.Parameter(real), lr=ssm_lr, weight_decay=0.0)
        self.complex_modes = lam.is_complex()
        if self.complex_modes:
            self.A_imag = set_optim(nn.Parameter(lam.imag.float().expand(shape).clone()), lr=ssm_lr, weight_decay=0.0)
            c = torch.randn(shape, dtype=torch.complex64) * b.to(torch.complex64)  # b folded into C
            self.C = nn.Parameter(torch.view_as_real(c))
        else:
            self.C = nn.Parameter(torch.randn(shape) * b.float())

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        real = -self.log_A_real.exp()
        if not self.complex_modes:
            return self.log_dt.exp(), real, self.C
        return self.log_dt.exp(), complex_from_parts(real, self.A_imag), as_complex(self.C)

    def kernel(self, length: int) -> Tensor:
        dt, a, c = self._params()
        return s4d_kernel(dt, a, c, length, discretization=self.discretization)

    def recurrence(self) -> tuple[Tensor, Tensor, Tensor]:
        dt, a, c = self._params()
        dA, dB = s4d_recurrence(dt, a, c, discretization=self.discretization)
        return dA, dB, c.to(dA.dtype)

    def state_modes(self) -> tuple[int, bool]:
        return self.log_A_real.shape[1], self.complex_modes


@register("s4d")
class S4D(SSMConvMixer):
    complexity = "O(L log L · d) parallel, O(d N) per token"
    state_formula = "d·d_state (d_state/2 complex modes, or d_state real ones)"
    test_hypers = ({"d_state": 8}, {"d_state": 4, "init": "real", "discretization": "bilinear"},
                   {"d_state": 8, "init": "legs"})
    float32_len = 4096  # long kernels: the phase l·dt·Im λ must stay accurate in float32

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt | None = None,
        d_state: PositiveInt = 64,
        init: S4DInit = "lin",
        discretization: Literal["zoh", "bilinear"] = "zoh",
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 0.1,
        ssm_lr: PositiveFloat = 1e-3,
    ) -> None:
        """d_state: N, the state size per channel (N/2 complex modes; even, except with init="real").
        Non-causal: a second set of SSM parameters gives the backward kernel."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        if init != "real" and d_state % 2:
            raise InvalidHyper(f"mixer 's4d': d_state={d_state} must be even with init={init!r} "
                               f"(complex modes come in conjugate pairs)")
        check_ordered("s4d", "dt_min", dt_min, "dt_max", dt_max)
        self.d_state = d_state
        self.build_layer(lambda: S4DKernel(d_model, d_state=d_state, init=init, discretization=discretization,
                                           dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr))

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * self.d_state

