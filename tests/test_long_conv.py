"""longconv, sgconv and ema against their layers written out with the oracles (the Toeplitz matrix, the
lag-by-lag SGConv kernel, the EMA loop), causal and two-sided; impulse responses; what each method adds (the
regularizers, the frozen-at-init norm, MEGA's lag-0 convention); refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longseq.mixers import InvalidHyper, SequenceTooLong, build
from longseq.modules.optim import optim_settings
from longseq.ops.ema import ema_ref
from longseq.ops.fft_conv import toeplitz_conv_bidirectional_ref, toeplitz_conv_ref
from longseq.ops.kernel_regularizers import squash
from longseq.ops.sgconv import multiscale_kernel_ref, n_scales
from longseq.testing.oracle import assert_same_function

D_MODEL, L = 8, 24
F64 = torch.float64


def _longconv_kernel(module, length):
    return squash(module.weight[:, :length], module.squash_lambda)


def _sgconv_kernel(module, length):
    k = multiscale_kernel_ref(list(module.subkernels), length, decay=module.decay, interpolation=module.interpolation)
    return k / module.initial_norm[:, None]


@pytest.mark.parametrize("name, ref_kernel, hypers", [
    ("longconv", _longconv_kernel, {"max_len": 40}),
    ("sgconv", _sgconv_kernel, {"max_len": 40, "kernel_dim": 4}),
    ("sgconv", _sgconv_kernel, {"max_len": 40, "kernel_dim": 8, "interpolation": "nearest"}),
])
@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_layer_equals_the_block_written_out(name, ref_kernel, hypers, pattern):
    torch.manual_seed(0)
    m = build(name, D_MODEL, pattern=pattern, **hypers).double()
    x = torch.randn(2, L, D_MODEL, dtype=F64, requires_grad=True)
    kernels = [ref_kernel(module, L) for module in m.kernels]
    u = x.mT
    y = (toeplitz_conv_ref(u, kernels[0], D=m.D) if len(kernels) == 1
         else toeplitz_conv_bidirectional_ref(u, kernels[0], kernels[1], D=m.D))
    want = F.glu(m.output[1](F.gelu(y.mT)), dim=-1)
    assert_same_function(m(x), want, [x, *m.parameters()])


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_ema_layer_equals_the_loop(pattern):
    """Non-causal: MEGA's bidirectional EMA, a backward EMA over the reversed sequence — lag 0 counted twice."""
    torch.manual_seed(0)
    m = build("ema", D_MODEL, pattern=pattern, ndim=3).double()
    x = torch.randn(2, L, D_MODEL, dtype=F64, requires_grad=True)
    fwd = m.kernels[0]
    y = ema_ref(x, fwd.alpha, fwd.delta, fwd.beta, fwd.eta)
    if pattern == "noncausal_self":
        bwd = m.kernels[1]
        y = y + ema_ref(x.flip(1), bwd.alpha, bwd.delta, bwd.beta, bwd.eta).flip(1)
    assert_same_function(m(x), F.silu(y + m.D * x), [x, *m.parameters()])


@pytest.mark.parametrize("name, hypers", [("longconv", {}), ("sgconv", {"kernel_dim": 4}), ("ema", {"ndim": 2})])
def test_impulse_response_is_the_kernel(name, hypers):
    torch.manual_seed(0)
    m = build(name, D_MODEL, **hypers).double()
    m.output = nn.Identity()  # the convolution alone: y = k * u + D u
    impulse = torch.zeros(1, L, D_MODEL, dtype=F64)
    impulse[:, 0] = 1.0
    want = m.kernels[0].kernel(L).T.clone()
    want[0] += m.D
    torch.testing.assert_close(m(impulse)[0], want.detach())


def test_sgconv_kernel_starts_at_unit_norm_and_its_norm_is_fixed_at_construction():
    torch.manual_seed(0)
    a = build("sgconv", D_MODEL, max_len=300, kernel_dim=16)
    torch.manual_seed(0)
    b = build("sgconv", D_MODEL, max_len=300, kernel_dim=16)
    torch.testing.assert_close(a.kernels[0].initial_norm, b.kernels[0].initial_norm)  # no first-call dependence
    assert "kernels.0.initial_norm" in a.state_dict()
    k = a.kernels[0].kernel(300)
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(D_MODEL))
    with torch.no_grad():
        a.kernels[0].subkernels[0].mul_(3.0)  # training moves the kernel; the norm stays the initial one
    assert a.kernels[0].kernel(300).norm(dim=-1).min() > 1.5


def test_sgconv_parameters_are_logarithmic_in_max_len():
    for max_len in (64, 1000, 65536):
        m = build("sgconv", D_MODEL, max_len=max_len, kernel_dim=32)
        n = sum(p.numel() for p in m.kernels.parameters())
        assert n == D_MODEL * 32 * n_scales(max_len, 32)


def test_kernel_dropout_acts_in_training_only():
    torch.manual_seed(0)
    m = build("longconv", D_MODEL, max_len=64, kernel_dropout=0.5, squash_lambda=0.0)
    x = torch.randn(2, L, D_MODEL)
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


@pytest.mark.parametrize("name, hypers", [("longconv", {}), ("sgconv", {"kernel_dim": 16})])
def test_kernels_have_their_own_learning_rate_and_no_weight_decay(name, hypers):
    m = build(name, D_MODEL, max_len=64, kernel_lr=5e-4, **hypers)
    params = list(m.kernels[0].parameters())
    assert len(params) == (1 if name == "longconv" else 3)
    for p in params:
        assert optim_settings(p) == {"lr": 5e-4, "weight_decay": 0.0}
    assert optim_settings(m.D) == {}


@pytest.mark.parametrize("name", ["longconv", "sgconv"])
def test_the_kernel_length_bounds_the_sequence(name):
    m = build(name, D_MODEL, max_len=16)
    with pytest.raises(SequenceTooLong, match="max_len=16"):
        m(torch.randn(1, 17, D_MODEL))
    state = m.init_state(1)
    _, state = m.forward_stream(torch.randn(1, 16, D_MODEL), state)
    assert state.history.shape[-1] == 15  # only the lags the kernel has
    with pytest.raises(SequenceTooLong):
        m.step(torch.randn(1, D_MODEL), state)


def test_bad_hypers_name_the_value():
    with pytest.raises(InvalidHyper, match="smooth_window=4"):
        build("longconv", D_MODEL, smooth_window=4)
    with pytest.raises(InvalidHyper, match="decay"):
        build("sgconv", D_MODEL, decay=0.5)
    with pytest.raises(InvalidHyper, match="ndim"):
        build("ema", D_MODEL, ndim=0)
