"""Causal depthwise short convolution: the F.conv1d form vs the loop-over-time oracle (outputs, final states and
gradients w.r.t. x, weight, bias and the initial state, float64), also dilated; the masked convention vs the same
row with its masked tokens removed; chunked streaming vs the whole sequence; no aliasing; refusals."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from longseq.ops.short_conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, state_width
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
B, D, L = 3, 16, 32


def _inputs(width: int, seed: int = 0, dilation: int = 1):
    """x: (B, D, L), weight: (D, W), bias: (D,), initial state: (B, D, (W-1)·dilation)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)
            for shape in ((B, D, L), (D, width), (D,), (B, D, state_width(width, dilation)))]


def _holes() -> torch.Tensor:
    """Row 0: left padding; row 1: holes inside the sequence, including a run longer than W; row 2: no valid token."""
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :5] = False
    mask[1, [3, 4, 9, 10, 11, 12, 13, 20, 31]] = False
    mask[2] = False
    return mask


@pytest.mark.parametrize(("width", "masked", "with_state", "activation", "with_bias"), [
    (width, masked, with_state, *extras) for width, masked, with_state, extras in itertools.product(
        [1, 2, 4], [False, True], [False, True], [(None, False), ("silu", True)])])
def test_fast_matches_reference(width, masked, with_state, activation, with_bias):
    x, w, b, s0 = _inputs(width, seed=width)
    kwargs = dict(bias=b if with_bias else None, initial_state=s0 if with_state else None, activation=activation,
                  return_final_state=True, mask=_holes() if masked else None)
    y, state = causal_conv1d(x, w, **kwargs)
    y_ref, state_ref = causal_conv1d_ref(x, w, **kwargs)
    torch.testing.assert_close(state, state_ref, atol=0, rtol=0)  # the state is a copy of inputs: exact
    inputs = [x, w] + ([b] if with_bias else []) + ([s0] if with_state else [])
    assert_same_function((y, state), (y_ref, state_ref), inputs)


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize(("width", "masked", "with_state"), [(3, True, True), (3, False, True), (4, True, False),
                                                             (2, False, False)])
def test_dilated_fast_matches_reference(dilation, width, masked, with_state):
    """Outputs, final states and gradients (x, weight, bias, initial state) of the dilated conv vs its loop, with
    holes, left padding and an empty row; a window (W-1)·d reaching past a hole into the initial state."""
    x, w, b, s0 = _inputs(width, seed=10 * dilation + width, dilation=dilation)
    kwargs = dict(bias=b, initial_state=s0 if with_state else None, activation="silu", return_final_state=True,
                  mask=_holes() if masked else None, dilation=dilation)
    y, state = causal_conv1d(x, w, **kwargs)
    y_ref, state_ref = causal_conv1d_ref(x, w, **kwargs)
    assert state.shape == (B, D, (width - 1) * dilation)
    torch.testing.assert_close(state, state_ref, atol=0, rtol=0)
    assert_same_function((y, state), (y_ref, state_ref), [x, w, b] + ([s0] if with_state else []))


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_dilated_chunked_streaming_equals_full(dilation, masked):
    """Chunks of 1, 2, 5 and 24 tokens (shorter and longer than the window (W-1)·d), each starting from the previous
    chunk's final state, give the whole sequence's outputs and final state; one update per token does too."""
    x, w, b, s0 = (t.detach() for t in _inputs(4, seed=dilation, dilation=dilation))
    mask = _holes() if masked else None

    def cut(start: int, stop: int) -> torch.Tensor | None:
        return None if mask is None else mask[:, start:stop]

    want, want_state = causal_conv1d(x, w, b, initial_state=s0, return_final_state=True, mask=mask,
                                     dilation=dilation)
    state, ys, start = s0, [], 0
    for n in (1, 2, 5, L - 8):
        y, state = causal_conv1d(x[..., start:start + n], w, b, initial_state=state, return_final_state=True,
                                 mask=cut(start, start + n), dilation=dilation)
        ys.append(y)
        start += n
    torch.testing.assert_close(torch.cat(ys, dim=-1), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(state, want_state, atol=0, rtol=0)
    state, ys = s0, []
    for t in range(L):
        y_t, state = causal_conv1d_update(x[..., t], state, w, b, mask_t=None if mask is None else mask[:, t],
                                          dilation=dilation)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, dim=-1), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(state, want_state, atol=0, rtol=0)


@pytest.mark.parametrize("dilation", [2, 3])
def test_dilated_is_the_formula(dilation):
    """y[t] = bias + sum_i weight[:, i] * x[t - (W-1-i)·d], zeros before the sequence (no state given)."""
    x, w, b, _ = (t.detach() for t in _inputs(3, dilation=dilation))
    want = b[None, :, None].expand(B, D, L).clone()
    for t in range(L):
        for i in range(3):
            src = t - (2 - i) * dilation
            if src >= 0:
                want[..., t] += w[:, i] * x[..., src]
    torch.testing.assert_close(causal_conv1d(x, w, b, dilation=dilation), want, atol=1e-12, rtol=0)


def test_update_is_the_formula():
    """One token by hand: act(bias + sum_i weight[:, i] * [state, x_t][i]), weight[:, -1] on the current token."""
    x, w, b, s0 = _inputs(4)
    y, state = causal_conv1d_update(x[..., 0], s0, w, b, activation="silu")
    window = [s0[..., 0], s0[..., 1], s0[..., 2], x[..., 0]]
    pre = b + sum(w[:, i] * window[i] for i in range(4))
    torch.testing.assert_close(y, pre * torch.sigmoid(pre), atol=1e-14, rtol=0)
    torch.testing.assert_close(state, torch.stack(window[1:], dim=-1), atol=0, rtol=0)


@pytest.mark.parametrize("fn", [causal_conv1d, causal_conv1d_ref])
@pytest.mark.parametrize(("width", "dilation"), [(2, 1), (4, 1), (7, 1), (3, 2), (4, 3)])
def test_masked_tokens_are_removed_not_zeroed(fn, width, dilation):
    """Each row equals the unmasked convolution of that row with its masked tokens taken out (scattered back, 0 at
    masked positions): the dilation counts valid tokens. The final state equals that of the shortened row,
    reaching into the initial state."""
    x, w, b, s0 = _inputs(width, seed=7, dilation=dilation)
    x, w, b, s0 = x.detach(), w.detach(), b.detach(), s0.detach()
    mask = _holes()
    mask[0, 5:-2] = False  # row 0: two valid tokens, fewer than (W-1)·d for the wider windows
    y, state = fn(x, w, b, initial_state=s0, activation="silu", return_final_state=True, mask=mask,
                  dilation=dilation)
    for r in range(B):
        keep = mask[r].nonzero().squeeze(1)
        want = torch.zeros(D, L, dtype=F64)
        want_state = s0[r]
        if keep.numel():
            y_r, want_state = causal_conv1d(x[r:r + 1, :, keep], w, b, initial_state=s0[r:r + 1], activation="silu",
                                            return_final_state=True, dilation=dilation)
            want[:, keep] = y_r[0]
            want_state = want_state[0]
        torch.testing.assert_close(y[r], want, atol=1e-12, rtol=0)
        torch.testing.assert_close(state[r], want_state, atol=0, rtol=0)


def test_garbage_at_masked_positions_stays_out():
    x, w, b, s0 = _inputs(4)
    mask = _holes()
    dirty = x.detach().masked_fill(~mask[:, None, :], float("nan")).requires_grad_()
    y, state = causal_conv1d(dirty, w, b, initial_state=s0, return_final_state=True, mask=mask)
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    assert y[2].abs().max() == 0 and torch.equal(state[2], s0[2])  # the row with no valid token
    grads = torch.autograd.grad((y.sum() + state.sum()), (dirty, w, b, s0))
    assert all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(y, causal_conv1d(x.detach().masked_fill(~mask[:, None, :], 0.0), w, b,
                                                initial_state=s0, mask=mask), atol=0, rtol=0)


def test_update_masked_row_keeps_its_state():
    x, w, b, s0 = (t.detach() for t in _inputs(4))
    mask_t = torch.tensor([True, False, True])
    y, state = causal_conv1d_update(x[..., 0], s0, w, b, mask_t=mask_t)
    assert y[1].abs().max() == 0 and torch.equal(state[1], s0[1])
    assert not torch.equal(state[0], s0[0])


def test_nothing_aliases_the_arguments():
    x, w, b, s0 = (t.detach() for t in _inputs(4))
    x_t, s_before = x[..., 0].clone(), s0.clone()
    for mask_t in (None, torch.tensor([True, False, True])):
        _, state = causal_conv1d_update(x_t, s0, w, b, mask_t=mask_t)
        assert torch.equal(s0, s_before)  # not modified in place
        kept = state.clone()
        x_t.fill_(123.0)
        s0.fill_(-5.0)
        assert torch.equal(state, kept)  # not a view of x_t or of conv_state
        s0.copy_(s_before)
    for mask in (None, _holes()):
        x_chunk = x.clone()
        _, state = causal_conv1d(x_chunk, w, b, initial_state=s0, return_final_state=True, mask=mask)
        kept = state.clone()
        x_chunk.fill_(123.0)
        s0.fill_(-5.0)
        assert torch.equal(state, kept)
        s0.copy_(s_before)


@pytest.mark.parametrize("dilation", [1, 3])
def test_matches_torch_conv1d_layer(dilation):
    """An independent check of the layout: nn.Conv1d(groups=D, dilation=d, padding=(W-1)·d) with its output cut
    to L."""
    conv = torch.nn.Conv1d(D, D, 4, groups=D, dilation=dilation, padding=3 * dilation, dtype=F64)
    x = torch.randn(B, D, L, dtype=F64)
    want = F.silu(conv(x)[..., :L])
    got = causal_conv1d(x, conv.weight[:, 0], conv.bias, activation="silu", dilation=dilation)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"weight": torch.randn(D, 4, 1)}, ["weight must have shape (D, W)"]),
    ({"weight": torch.randn(D + 1, 4)}, ["x must have shape (B, D, L)", "D = 17"]),
    ({"bias": torch.randn(D + 1)}, ["bias must have shape (D,)", "(17,)"]),
    ({"initial_state": torch.randn(B, D, 4)}, ["initial_state must have shape (B, D, (W-1)·dilation)", "(3, 16, 3)"]),
    ({"initial_state": torch.randn(B, D, 3), "dilation": 2}, ["(W-1)·dilation", "(3, 16, 6)"]),
    ({"dilation": 0}, ["dilation=0 must be a positive integer"]),
    ({"dilation": 1.5}, ["dilation=1.5 must be a positive integer"]),
    ({"dilation": True}, ["dilation=True must be a positive integer"]),
    ({"activation": "relu"}, ["activation='relu'", "allowed: None, 'silu'"]),
    ({"mask": torch.ones(B, L)}, ["mask must be a bool tensor", "(3, 32)"]),
    ({"x": torch.randn(B, D, 0)}, ["L >= 1"]),
])
@pytest.mark.parametrize("fn", [causal_conv1d, causal_conv1d_ref])
def test_refusals_name_the_argument(fn, kwargs, words):
    args = {"x": torch.randn(B, D, L), "weight": torch.randn(D, 4)} | kwargs
    with pytest.raises(ValueError) as info:
        fn(**args)
    for word in words:
        assert word in str(info.value)


def test_update_refusals():
    w = torch.randn(D, 4)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, D\)"):
        causal_conv1d_update(torch.randn(B, D, 1), torch.zeros(B, D, 3), w)
    with pytest.raises(ValueError, match="conv_state must have shape"):
        causal_conv1d_update(torch.randn(B, D), torch.zeros(B, D, 4), w)
    with pytest.raises(ValueError, match=r"mask_t must be a bool tensor of shape \(3,\)"):
        causal_conv1d_update(torch.randn(B, D), torch.zeros(B, D, 3), w, mask_t=torch.ones(B, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="dilation=-1 must be a positive integer"):
        causal_conv1d_update(torch.randn(B, D), torch.zeros(B, D, 3), w, dilation=-1)
    with pytest.raises(ValueError, match=r"conv_state must have shape \(B, D, \(W-1\)·dilation\) = \(3, 16, 6\)"):
        causal_conv1d_update(torch.randn(B, D), torch.zeros(B, D, 3), w, dilation=2)
