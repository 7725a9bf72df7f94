"""TCN: the receptive field by its gradient (causal: exactly x[t-R+1..t]; non-causal: the R tokens centred on t),
the parallel form against an explicit loop over blocks with the oracle convolution, centred taps by hand, masked
tokens as a no-op on every block's state, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longseq.mixers import InvalidHyper, build
from longseq.modules.tcn import DilatedTCN
from longseq.ops.short_conv import causal_conv1d_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
D_MODEL, B = 8, 2
# (kernel_size, n_layers, dilation_base) -> R = 1 + (K-1)·(f^n - 1)/(f - 1), or 1 + (K-1)·n for f = 1
CAUSAL_CASES = [((3, 3, 2), 15), ((2, 4, 2), 16), ((3, 2, 3), 9), ((4, 3, 1), 10), ((2, 1, 5), 2)]
CENTRED_CASES = [((3, 3, 2), 15), ((5, 2, 2), 13), ((3, 2, 3), 9), ((3, 3, 1), 7)]


def _tcn(pattern: str, kernel_size: int, n_layers: int, dilation_base: int, seed: int = 0):
    torch.manual_seed(seed)
    return build("tcn", D_MODEL, pattern=pattern, kernel_size=kernel_size, n_layers=n_layers,
                 dilation_base=dilation_base).double().eval()


def _input_gradient(m, length: int, t: int) -> torch.Tensor:
    """|d <c, y_t> / d x_s| summed over channels, for every s: (L,)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, length, D_MODEL, generator=g, dtype=F64, requires_grad=True)
    cotangent = torch.randn(D_MODEL, generator=g, dtype=F64)
    (grad,) = torch.autograd.grad((m(x)[0, t] * cotangent).sum(), x)
    return grad[0].abs().sum(dim=-1)


@pytest.mark.parametrize(("hypers", "field"), CAUSAL_CASES)
def test_causal_receptive_field_is_exactly_R_tokens(hypers, field):
    m = _tcn("causal_self", *hypers)
    assert m.receptive_field == field
    length = field + 6
    t = length - 2
    grad = _input_gradient(m, length, t)
    assert grad[t - field + 1] > 0, "the oldest token in the receptive field must reach y_t"
    assert grad[t] > 0
    assert grad[: t - field + 1].abs().max() == 0, "tokens older than the receptive field must not reach y_t"
    assert grad[t + 1:].abs().max() == 0


@pytest.mark.parametrize(("hypers", "field"), CENTRED_CASES)
def test_noncausal_receptive_field_is_centred(hypers, field):
    m = _tcn("noncausal_self", *hypers)
    assert m.receptive_field == field
    half = (field - 1) // 2
    length = field + 8
    t = half + 3
    grad = _input_gradient(m, length, t)
    assert grad[t - half] > 0 and grad[t + half] > 0
    assert grad[: t - half].abs().max() == 0 and grad[t + half + 1:].abs().max() == 0


@pytest.mark.parametrize("segment", [None, 5])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("hypers", [(3, 3, 2), (2, 4, 2), (3, 2, 3)])
def test_causal_layer_is_a_loop_over_blocks_with_the_oracle_conv(monkeypatch, hypers, masked, segment):
    """y = out_proj(h_n), h_{i+1} = h_i + GELU(conv_ref_i(h_i)) with each block's own weights and dilation; with a
    mask, each block's oracle skips the masked tokens and the outputs there are 0. forward() runs in segments of
    SEGMENT_TOKENS carrying the block windows (here also 5 tokens of 24)."""
    from longseq.mixers import _passes

    if segment is not None:
        monkeypatch.setattr(_passes, "SEGMENT_TOKENS", segment)
    m = _tcn("causal_self", *hypers)
    x = torch.randn(B, 24, D_MODEL, dtype=F64, requires_grad=True)
    mask = None
    if masked:
        mask = torch.ones(B, 24, dtype=torch.bool)
        mask[0, :3] = False
        mask[1, [5, 6, 7, 15]] = False
    h = x
    for conv, dilation in zip(m.tcn.convs, m.tcn.dilations, strict=True):
        y = causal_conv1d_ref(h.mT, conv.weight[:, 0], conv.bias, mask=mask, dilation=dilation).mT
        h = h + F.gelu(y)
    want = m.out_proj(h)
    if mask is not None:
        want = want.masked_fill(~mask[..., None], 0.0)
    assert_same_function(m(x, mask=mask), want, [x, *m.parameters()])


def test_noncausal_taps_are_centred():
    """One block by hand: h + GELU(bias + sum_i w_i · x[t + (i - (K-1)/2)·d]), zeros beyond both ends."""
    tcn = DilatedTCN(D_MODEL, kernel_size=5, n_layers=2, dilation_base=3, causal=False).double()
    x = torch.randn(B, 20, D_MODEL, dtype=F64)
    h = x
    for conv, dilation in zip(tcn.convs, (1, 3), strict=True):
        weight, bias = conv.weight[:, 0], conv.bias
        padded = F.pad(h.mT, (2 * dilation, 2 * dilation))
        y = sum(weight[:, i, None] * padded[..., i * dilation:i * dilation + 20] for i in range(5)) + bias[:, None]
        h = h + F.gelu(y.mT)
    torch.testing.assert_close(tcn(x), h, atol=1e-12, rtol=0)


def test_masked_tokens_are_a_no_op_on_every_block_state():
    tcn = DilatedTCN(D_MODEL, kernel_size=3, n_layers=3).double()
    x = torch.randn(B, 7, D_MODEL, dtype=F64)
    _, state = tcn.forward_stream(x, tcn.init_state(B))
    assert [w.shape[-1] for w in state.windows] == [2, 4, 8]  # (K-1)·f^i
    assert state.num_floats() == D_MODEL * (tcn.receptive_field - 1)
    y, after = tcn.forward_stream(x, state, torch.zeros(B, 7, dtype=torch.bool))
    y_t, after_step = tcn.step(x[:, 0], state, torch.zeros(B, dtype=torch.bool))
    assert y.abs().max() == 0 and y_t.abs().max() == 0
    for new in (after, after_step):
        assert all(torch.equal(a, b) for a, b in zip(new.windows, state.windows, strict=True))


@pytest.mark.parametrize(("hypers", "words"), [
    ({"pattern": "noncausal_self", "kernel_size": 4}, ["kernel_size=4", "odd", "noncausal_self"]),
    ({"dropout": 1.0}, ["dropout=1.0"]),
    ({"n_layers": 0}, ["n_layers=0"]),
    ({"dilation_base": 0}, ["dilation_base=0"]),
    ({"kernel_size": -1}, ["kernel_size=-1"]),
])
def test_bad_hypers_are_refused_naming_them(hypers, words):
    with pytest.raises(InvalidHyper) as info:
        build("tcn", 16, **hypers)
    for word in words:
        assert word in str(info.value)


def test_even_kernel_is_fine_when_causal_and_the_module_refuses_it_centred():
    assert build("tcn", 16, kernel_size=4, n_layers=2).receptive_field == 1 + 3 * 3
    with pytest.raises(ValueError, match="kernel_size=2 must be odd when causal=False"):
        DilatedTCN(D_MODEL, kernel_size=2, causal=False)
    with pytest.raises(ValueError, match="init_state needs causal=True"):
        DilatedTCN(D_MODEL, causal=False).init_state(B)
    with pytest.raises(ValueError, match=r"dropout=1\.5 must be in \[0, 1\)"):
        DilatedTCN(D_MODEL, dropout=1.5)
