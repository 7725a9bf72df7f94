"""S4 and S4D against their layer written out with the oracle kernels (explicit powers of the discretised A, an
explicit Toeplitz matrix), causal and bidirectional; initialisations and per-parameter optimizer settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longseq.mixers import build
from longseq.modules.optim import optim_settings
from longseq.ops.fft_conv import toeplitz_conv_bidirectional_ref, toeplitz_conv_ref
from longseq.ops.ssm_kernel import s4_kernel_ref, s4d_kernel_ref
from longseq.testing.oracle import assert_same_function

D_MODEL, L = 8, 24


def _ref_kernel(ssm, length: int) -> torch.Tensor:
    """The SSM's kernel by explicit powers (the ops' oracles), from the module's own parameters."""
    if hasattr(ssm, "P"):
        return s4_kernel_ref(*ssm._params(), length)
    return s4d_kernel_ref(*ssm._params(), length, discretization=ssm.discretization)


def _by_hand(m, x: torch.Tensor) -> torch.Tensor:
    u = x.mT
    kernels = [_ref_kernel(ssm, x.shape[1]) for ssm in m.kernels]
    y = (toeplitz_conv_ref(u, kernels[0], D=m.D) if len(kernels) == 1
         else toeplitz_conv_bidirectional_ref(u, kernels[0], kernels[1], D=m.D))
    linear = m.output[1]
    return F.glu(F.linear(F.gelu(y.mT), linear.weight, linear.bias), dim=-1)


CASES = [("s4d", {"d_state": 8}), ("s4d", {"d_state": 6, "init": "inv", "discretization": "bilinear"}),
         ("s4d", {"d_state": 4, "init": "real"}), ("s4d", {"d_state": 8, "init": "legs"}), ("s4", {"d_state": 6})]


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize(("name", "hypers"), CASES)
def test_layer_is_its_oracle_kernel_convolution(name, hypers, pattern):
    torch.manual_seed(0)
    m = build(name, D_MODEL, pattern=pattern, **hypers).double()
    x = torch.randn(2, L, D_MODEL, dtype=torch.float64, requires_grad=True)
    assert_same_function(m(x), _by_hand(m, x), [x, *m.parameters()], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_ssm_parameters_train_at_their_own_rate_without_decay(name):
    m = build(name, D_MODEL, d_state=4, ssm_lr=2e-3)
    ssm = m.kernels[0]
    marked = {n for n, p in ssm.named_parameters() if optim_settings(p) == {"lr": 2e-3, "weight_decay": 0.0}}
    assert marked == ({"log_dt", "log_Lambda_real", "Lambda_imag", "P", "B"} if name == "s4"
                      else {"log_dt", "log_A_real", "A_imag"})
    dt = ssm.log_dt.exp()
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 0.1 + 1e-9


def test_s4d_initialisations():
    lin = build("s4d", D_MODEL, d_state=8).kernels[0]
    torch.testing.assert_close(-lin.log_A_real.exp()[0], torch.full((4,), -0.5))
    torch.testing.assert_close(lin.A_imag[0], torch.pi * torch.arange(4.0))
    real = build("s4d", D_MODEL, d_state=5, init="real").kernels[0]
    torch.testing.assert_close(-real.log_A_real.exp()[0], -torch.arange(1.0, 6.0))
    with pytest.raises(ValueError, match="d_state=5 must be even"):
        build("s4d", D_MODEL, d_state=5)


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_decoding_reuses_the_step_matrices_only_while_the_parameters_are_unchanged(name):
    torch.manual_seed(0)
    m = build(name, D_MODEL, d_state=4).double().eval()
    x = torch.randn(1, 6, D_MODEL, dtype=torch.float64)

    def decode() -> torch.Tensor:
        state, ys = m.init_state(1), []
        for t in range(x.shape[1]):
            y, state = m.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, dim=1)

    with torch.no_grad():
        torch.testing.assert_close(decode(), m(x), atol=1e-10, rtol=1e-9)
        m.kernels[0].log_dt.add_(0.7)  # an optimizer step updates in place
        torch.testing.assert_close(decode(), m(x), atol=1e-10, rtol=1e-9)
