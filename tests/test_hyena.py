"""Hyena against its formula written out (explicit Toeplitz convolutions, the short convolution by conv1d), the
implicit filter (its formula, its prefix property, its decay, its optimizer settings), impulse responses through
the whole operator in every mode, and the refusals past max_len."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longseq.mixers import InvalidHyper, SequenceTooLong, build
from longseq.modules.implicit_filter import ImplicitFilter
from longseq.modules.optim import optim_settings
from longseq.ops.fft_conv import toeplitz_conv_bidirectional_ref, toeplitz_conv_ref
from longseq.testing.oracle import assert_same_function

D_MODEL, L, MAX_LEN = 4, 20, 32


def _hyena(pattern: str = "causal_self", **hypers) -> torch.nn.Module:
    torch.manual_seed(0)
    return build("hyena", D_MODEL, pattern=pattern, max_len=MAX_LEN, filter_order=8, **hypers).double()


def _short_conv(m, x: torch.Tensor) -> list[torch.Tensor]:
    """in_proj, then the reference's causal depthwise Conv1d (padding W-1, first L outputs), split into the
    (N+1) streams x_0, ..., x_{N-1}, v, each (B, D, L)."""
    u = F.linear(x, m.in_proj.weight, m.in_proj.bias).mT
    conv = m.short_conv
    u = F.conv1d(u, conv.weight[:, None], conv.bias, padding=conv.kernel_size - 1, groups=u.shape[1])
    return list(u[..., : x.shape[1]].split(D_MODEL, dim=1))


def _long_conv(m, v: torch.Tensor, i: int) -> torch.Tensor:
    """h_i * v + b_i ⊙ v as an explicit Toeplitz matrix; filter i of channel d is the implicit filter's channel
    (d, i) (and direction last, forward first, when two-sided)."""
    directions = 1 if m.pattern.is_causal else 2
    h = m.filter.filter(v.shape[-1]).view(D_MODEL, m.order - 1, directions, -1)[:, i]
    if directions == 1:
        return toeplitz_conv_ref(v, h[:, 0], D=m.bias[i])
    return toeplitz_conv_bidirectional_ref(v, h[:, 0], h[:, 1], D=m.bias[i])


def _order2_by_hand(m, x: torch.Tensor) -> torch.Tensor:
    """y = out_proj(x_0 ⊙ (h * (x_1 ⊙ v) + b ⊙ (x_1 ⊙ v)))."""
    x0, x1, v = _short_conv(m, x)
    return m.out_proj((x0 * _long_conv(m, x1 * v, 0)).mT)


def _order3_by_hand(m, x: torch.Tensor) -> torch.Tensor:
    """The reference's loop unrolled: gate with x_2, convolve with filter 0; gate with x_1, convolve with filter 1;
    gate with x_0."""
    x0, x1, x2, v = _short_conv(m, x)
    z = _long_conv(m, x2 * v, 0)
    return m.out_proj((x0 * _long_conv(m, x1 * z, 1)).mT)


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize(("order", "by_hand"), [(2, _order2_by_hand), (3, _order3_by_hand)])
def test_operator_is_its_formula(order, by_hand, pattern):
    m = _hyena(pattern, order=order)
    x = torch.randn(2, L, D_MODEL, dtype=torch.float64, requires_grad=True)
    assert_same_function(m(x), by_hand(m, x), [x, *m.parameters()], atol=1e-10, rtol=1e-8)


def _pass_through(m) -> None:
    """Gates x_i = 1, v = the input, short convolution and out_proj the identity: the operator is then the last
    long convolution h_0 * u + b_0 ⊙ u alone (order 2)."""
    d = D_MODEL
    with torch.no_grad():
        m.in_proj.weight.zero_()
        m.in_proj.bias.zero_()
        m.in_proj.weight[-d:] = torch.eye(d)
        m.in_proj.bias[:-d] = 1.0
        m.short_conv.weight.zero_()
        m.short_conv.weight[:, -1] = 1.0
        m.short_conv.bias.zero_()
        m.out_proj.weight.copy_(torch.eye(d))
        m.out_proj.bias.zero_()


def test_impulse_response_is_the_filter_plus_the_skip_in_every_mode():
    m = _hyena()
    _pass_through(m)
    impulse = torch.zeros(1, L, D_MODEL, dtype=torch.float64)
    impulse[:, 0] = 1.0
    with torch.no_grad():
        want = m.filter.filter(L).clone().mT[None]  # (1, L, D): filter i=0 is channel d alone at order 2
        want[:, 0] += m.bias[0]
        torch.testing.assert_close(m(impulse), want, atol=1e-12, rtol=0)
        state, steps = m.init_state(1), []
        for t in range(L):
            y, state = m.step(impulse[:, t], state)
            steps.append(y)
        torch.testing.assert_close(torch.stack(steps, dim=1), want, atol=1e-12, rtol=0)


def test_noncausal_impulse_response_is_the_backward_filter_before_the_token():
    m = _hyena("noncausal_self")
    _pass_through(m)
    impulse = torch.zeros(1, L, D_MODEL, dtype=torch.float64)
    impulse[:, -1] = 1.0  # the last token: every other output sees it through the backward filter
    with torch.no_grad():
        h = m.filter.filter(L).view(D_MODEL, 2, L)  # (d, direction, lag)
        want = torch.cat((h[:, 1, : L - 1].flip(-1), h[:, 0, :1] + m.bias[0, :, None]), dim=-1).mT[None]
        torch.testing.assert_close(m(impulse), want, atol=1e-12, rtol=0)


# -- the implicit filter -------------------------------------------------------------------------------------------


def test_filter_is_its_formula():
    torch.manual_seed(0)
    f = ImplicitFilter(6, MAX_LEN, emb_dim=5, width=8, num_inner_mlps=1, w=3.0, shift=0.05).double()
    lag = torch.arange(MAX_LEN, dtype=torch.float64)[:, None]
    omega = 2 * math.pi * lag / MAX_LEN
    bands = torch.tensor([1e-4, 1.0], dtype=torch.float64)  # linspace(1e-4, bands-1, bands), bands = 2
    z = torch.cat((lag / (MAX_LEN - 1), torch.cos(bands * omega), -torch.sin(bands * omega)), dim=-1)
    torch.testing.assert_close(f.z, z, atol=1e-6, rtol=0)  # the buffers are built in float32
    h = z
    for layer in f.layers:
        h = torch.sin(3.0 * F.linear(h, layer.weight, layer.bias))  # freq starts at w
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, 6, dtype=torch.float64).abs()
    want = (F.linear(h, f.out.weight) * (torch.exp(-lag / (MAX_LEN - 1) * deltas) + 0.05)).T
    torch.testing.assert_close(f.filter(MAX_LEN), want, atol=1e-6, rtol=1e-6)


def test_filter_at_a_length_is_the_first_lags_at_max_len():
    torch.manual_seed(0)
    f = ImplicitFilter(6, MAX_LEN, width=8).double()
    full = f.filter(MAX_LEN)
    for length in (1, 7, MAX_LEN - 1):
        torch.testing.assert_close(f.filter(length), full[:, :length], atol=1e-13, rtol=0)


def test_filter_decays_at_init():
    """The exponential window: at init the filter is larger over its first lags than over its last."""
    torch.manual_seed(0)
    h = ImplicitFilter(3 * 16, 1024).filter(1024).abs()
    tenth = 1024 // 10
    assert h[:, -tenth:].mean() < h[:, :tenth].mean()


def test_filter_refuses_lengths_past_max_len_and_bad_emb_dim():
    f = ImplicitFilter(2, MAX_LEN, width=4)
    with pytest.raises(ValueError, match=f"length={MAX_LEN + 1} is outside 0..max_len={MAX_LEN}"):
        f.filter(MAX_LEN + 1)
    with pytest.raises(ValueError, match="emb_dim=4 must be an odd integer >= 3"):
        ImplicitFilter(2, MAX_LEN, emb_dim=4)
    with pytest.raises(InvalidHyper, match=r"mixer 'hyena'.*emb_dim=1 must be an odd integer >= 3"):
        build("hyena", D_MODEL, emb_dim=1)


@pytest.mark.parametrize(("filter_lr", "want"), [(3e-4, {"lr": 3e-4, "weight_decay": 0.0}),
                                                 (None, {"weight_decay": 0.0})])
def test_filter_parameters_carry_their_optimizer_settings(filter_lr, want):
    m = build("hyena", D_MODEL, filter_order=8, filter_lr=filter_lr)
    marked = {n for n, p in m.named_parameters() if optim_settings(p)}
    assert marked == {n for n, _ in m.named_parameters() if n.startswith("filter.")}
    assert {"filter.act.freq", "filter.out.weight", "filter.layers.0.bias"} <= marked
    assert all(optim_settings(p) == want for n, p in m.named_parameters() if n in marked)


# -- max_len, the state, the streaming filter ----------------------------------------------------------------------


def test_sequences_past_max_len_are_refused():
    m = _hyena().eval()
    x = torch.randn(1, MAX_LEN + 1, D_MODEL, dtype=torch.float64)
    with pytest.raises(SequenceTooLong, match=f"length {MAX_LEN + 1} but was built with max_len={MAX_LEN}"):
        m(x)
    _, state = m.forward_stream(x[:, :MAX_LEN], m.init_state(1))
    with pytest.raises(SequenceTooLong, match=f"length {MAX_LEN + 1}"):
        m.step(x[:, MAX_LEN], state)
    assert build("hyena", D_MODEL).max_len == 1024
    with pytest.raises(InvalidHyper, match="max_len=None"):
        build("hyena", D_MODEL, max_len=None)  # the filter needs a length; a model config without one omits it
    with pytest.raises(InvalidHyper, match="order=1"):
        build("hyena", D_MODEL, order=1)


@pytest.mark.parametrize("order", [2, 3])
def test_state_size_once_the_histories_are_full(order):
    """At max_len the histories hold max_len-1 inputs: the state_size formula's min() is reached."""
    m = _hyena(order=order).eval()
    x = torch.randn(2, MAX_LEN, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        y, state = m.forward_stream(x, m.init_state(2))
        torch.testing.assert_close(y, m(x), atol=1e-10, rtol=0)
    assert state.num_floats() == m.state_size(MAX_LEN) == D_MODEL * ((order - 1) * (MAX_LEN - 1) + (order + 1) * 2)


def test_decoding_uses_the_current_filter():
    """The streaming filter is cached outside autograd: a parameter changed in place must be seen."""
    m = _hyena().eval()
    x = torch.randn(1, 6, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(2):
            state, ys = m.init_state(1), []
            for t in range(x.shape[1]):
                y, state = m.step(x[:, t], state)
                ys.append(y)
            torch.testing.assert_close(torch.stack(ys, dim=1), m(x), atol=1e-10, rtol=0)
            m.filter.out.weight.mul_(2.0)
