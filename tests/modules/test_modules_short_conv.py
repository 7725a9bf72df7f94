"""ShortConv: forward vs the loop-over-time oracle (channels-last, with its own weights), streaming over many chunk
splits and step-by-step vs forward (with and without holes in the mask, with and without dilation), rows without a
valid token, no aliasing of the caller's inputs, gradients through chained forward_stream calls, refusals."""

from __future__ import annotations

import pytest
import torch

from longseq.modules import ShortConv, ShortConvState
from longseq.ops.short_conv import causal_conv1d_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
B, L, D = 3, 32, 16
SPLITS = [[1, L - 1], [L // 2 - 1, L // 2 + 1], [3, 13, L - 16], [L], [1] * L, [5, 1, 1, 7, 2, 16]]


def _conv(kernel_size: int = 4, activation: str | None = "silu", bias: bool = True, dilation: int = 1) -> ShortConv:
    torch.manual_seed(kernel_size)
    return ShortConv(D, kernel_size, bias=bias, activation=activation, dilation=dilation).to(F64)


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, L, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _holes() -> torch.Tensor:
    """Row 0: left padding; row 1: holes inside, one longer than the kernel; row 2: no valid token."""
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :6] = False
    mask[1, [2, 3, 10, 11, 12, 13, 14, 15, 22, 31]] = False
    mask[2] = False
    return mask


def _stream(conv: ShortConv, x: torch.Tensor, chunks: list[int], mask: torch.Tensor | None = None) -> torch.Tensor:
    state, ys, start = conv.init_state(x.shape[0]), [], 0
    for n in chunks:
        y, state = conv.forward_stream(x[:, start:start + n], state,
                                       mask=None if mask is None else mask[:, start:start + n])
        ys.append(y)
        start += n
    return torch.cat(ys, dim=1)


@pytest.mark.parametrize(("activation", "bias", "masked", "dilation"), [
    (None, False, False, 1), ("silu", True, False, 1), ("silu", True, True, 1), (None, True, True, 3)])
def test_forward_matches_reference(activation, bias, masked, dilation):
    conv = _conv(activation=activation, bias=bias, dilation=dilation)
    x = _x().requires_grad_()
    mask = _holes() if masked else None
    got = conv(x, mask=mask)
    want = causal_conv1d_ref(x.transpose(1, 2), conv.weight, conv.bias, activation=activation, mask=mask,
                             dilation=dilation).transpose(1, 2)
    assert_same_function(got, want, [x, *conv.parameters()])


@pytest.mark.parametrize(("kernel_size", "dilation"), [(1, 1), (4, 1), (6, 1), (3, 4), (2, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_stream_and_step_equal_forward(kernel_size, dilation, masked):
    conv = _conv(kernel_size, dilation=dilation)
    x, mask = _x(kernel_size), _holes() if masked else None
    with torch.no_grad():
        want = conv(x, mask=mask)
        for chunks in SPLITS:
            torch.testing.assert_close(_stream(conv, x, chunks, mask), want, atol=1e-12, rtol=0,
                                       msg=lambda m, c=chunks: f"chunks {c}: {m}")
        state, ys = conv.init_state(B), []
        for t in range(L):
            y_t, state = conv.step(x[:, t], state, mask_t=None if mask is None else mask[:, t])
            ys.append(y_t)
        torch.testing.assert_close(torch.stack(ys, dim=1), want, atol=1e-12, rtol=0)


def test_rows_without_a_valid_token_are_zero_and_finite():
    conv = _conv()
    x = _x().requires_grad_()
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, 3] = True
    y = conv(x, mask=mask)
    assert torch.isfinite(y).all() and y[1:].abs().max() == 0 and y[0, 3].abs().max() > 0
    grads = torch.autograd.grad(y.sum(), [x, *conv.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    state = conv.init_state(B)
    _, after = conv.forward_stream(x[:, :5].detach(), state, mask=torch.zeros(B, 5, dtype=torch.bool))
    assert torch.equal(after.window, state.window)


def test_overwriting_inputs_after_a_call_changes_nothing():
    conv = _conv()
    x, mask = _x(), _holes()
    with torch.no_grad():
        want = conv(x, mask=mask)
        first, m_first = x[:, :10].clone(), mask[:, :10].clone()
        y1, state = conv.forward_stream(first, conv.init_state(B), mask=m_first)
        first.fill_(1e6)
        m_first.fill_(True)
        x_t, m_t = x[:, 10].clone(), mask[:, 10].clone()
        y2, state = conv.step(x_t, state, mask_t=m_t)
        x_t.fill_(-1e6)
        m_t.fill_(False)
        y3, _ = conv.forward_stream(x[:, 11:], state, mask=mask[:, 11:])
    torch.testing.assert_close(torch.cat((y1, y2[:, None], y3), dim=1), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_gradients_through_chained_streams_equal_forward(masked):
    conv = _conv()
    x, mask = _x().requires_grad_(), _holes() if masked else None
    cot = torch.randn(B, L, D, dtype=F64)
    inputs = [x, *conv.parameters()]
    want = torch.autograd.grad((conv(x, mask=mask) * cot).sum(), inputs)
    for chunks in SPLITS[:3]:
        got = torch.autograd.grad((_stream(conv, x, chunks, mask) * cot).sum(), inputs)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=lambda m, c=chunks: f"chunks {c}: {m}")


def test_state():
    conv = _conv(kernel_size=5)
    state = conv.init_state(2)
    assert isinstance(state, ShortConvState)
    assert state.window.shape == (2, D, 4) and state.window.dtype == F64 and state.window.abs().max() == 0
    assert state.num_floats() == D * 4
    assert conv.init_state(2, dtype=torch.float32).window.dtype == torch.float32
    dilated = _conv(kernel_size=3, dilation=4).init_state(2)
    assert dilated.window.shape == (2, D, 8) and dilated.num_floats() == D * 8  # (W-1)·dilation inputs


def test_refusals():
    with pytest.raises(ValueError, match="kernel_size=0 must be a positive integer"):
        ShortConv(D, 0)
    with pytest.raises(ValueError, match="activation='gelu' is not allowed"):
        ShortConv(D, activation="gelu")
    with pytest.raises(ValueError, match="dilation=0 must be a positive integer"):
        ShortConv(D, dilation=0)
    conv = _conv()
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, 16\), got \(3, 16, 32\)"):
        conv(_x().transpose(1, 2))
    with pytest.raises(TypeError, match="state must come from its init_state"):
        conv.forward_stream(_x(), object())
    with pytest.raises(ValueError, match=r"initial_state must have shape \(B, D, \(W-1\)·dilation\)"):
        conv.forward_stream(_x(), ShortConv(D, 3).init_state(B))
    with pytest.raises(ValueError, match=r"initial_state must have shape .* = \(3, 16, 3\), got \(3, 16, 6\)"):
        conv.forward_stream(_x(), ShortConv(D, 3, dilation=3).init_state(B))
