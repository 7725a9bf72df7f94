"""SeqBoat: the layer against its function written out row by row with its own weights (the activated tokens listed
explicitly, their window counted among them, the bias on original positions), outputs and gradients in float64;
the paper's degenerate limits (every token activated = local gated attention scaled by the gain; none = SiLU(hx +
x) without calling attention; a window covering the activated tokens = full causal attention over them); the
router's causality; the decoding state; refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import longseq.mixers.seqboat as seqboat
import longseq.ops.sparse_activation as sparse_ops
from longseq.mixers import InvalidHyper, PatternNotSupported, SequenceTooLong, build
from longseq.ops.biased_attention import biased_attention_ref
from longseq.ops.sparse_activation import local_biased_attention_ref, route_ref
from longseq.testing.inputs import run_schedule
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
D = 16


def _mixer(pattern: str = "causal_self", seed: int = 0, **hypers) -> seqboat.SeqBoat:
    torch.manual_seed(seed)
    hypers = {"z_dim": 8, "ndim": 4, "window": 3, "max_len": 64, **hypers}
    return build("seqboat", D, pattern=pattern, **hypers).double().eval()


def _x(b: int = 3, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, length, D, dtype=F64, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def _holes(b: int = 3, length: int = 24) -> torch.Tensor:
    """Row 0 left padding and holes, row 1 right padding, row 2 no valid token."""
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, :2] = False
    mask[0, 7:10] = False
    mask[1, length - 5:] = False
    mask[2] = False
    return mask


def _router(m, x, mask):
    """hx, logits, the EMA's output m and the valid tokens, with the mixer's weights."""
    valid = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
    mm = m.ema(x, mask=mask)
    u, hx = F.linear(mm, m.hx_proj.weight, m.hx_proj.bias).split([2, D], dim=-1)
    return mm, u, hx, valid


def _visible(n: int, window: int | None, causal: bool) -> torch.Tensor:
    """(n, n): which activated tokens (by rank) each sees: all earlier ones and itself (window None, causal), or
    the ranks within ``window`` before it (and after it, non-causal)."""
    ri, rj = torch.arange(n)[:, None], torch.arange(n)[None, :]
    if window is None:
        return rj <= ri
    return (rj >= ri - window) & ((rj <= ri) if causal else (rj <= ri + window))


def _reference(m, x, mask=None, *, window: int | None = None):
    """The layer row by row: query a (the a-th activated token) sees the activated tokens of rank a-w..a (causal) or
    a-w..a+w, all earlier ones (causal) when ``window`` is None; the bias on their valid-token positions."""
    mm, u, hx, valid = _router(m, x, mask)
    act, gain = route_ref(u, m.log_temperature.exp(), valid)
    p = m.rel_bias.max_positions
    y = torch.zeros_like(x)
    for b in range(x.shape[0]):
        idx = act[b].nonzero().flatten()
        if len(idx) == 0:
            continue
        pos = (valid[b].cumsum(0) - 1)[idx]
        z, r, v = F.silu(F.linear(mm[b, idx], m.mx_proj.weight, m.mx_proj.bias)).split([m.z_dim, m.h_dim, m.h_dim], -1)
        q, k = z * m.qk.gamma[0] + m.qk.beta[0], z * m.qk.gamma[1] + m.qk.beta[1]
        bias = m.rel_bias.weight[pos[None, :] - pos[:, None] + p - 1]
        h = biased_attention_ref(q, k, v, _visible(len(idx), window, m.pattern.is_causal), bias=bias, kernel=m.kernel)
        y[b, idx] = F.linear(h * r, m.h_proj.weight, m.h_proj.bias) * gain[b, idx, None]
    return F.silu(hx + y + x).masked_fill(~valid[..., None], 0.0)


def _params(m):
    return [m.log_temperature, m.hx_proj.weight, m.mx_proj.weight, m.qk.gamma, m.rel_bias.weight, m.h_proj.weight]


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize("kernel", ["softmax", "relu2", "laplace"])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_matches_the_layer_written_out(pattern, kernel, masked):
    m, x = _mixer(pattern, kernel=kernel), _x()
    mask = _holes() if masked else None
    y = m(x, mask=mask)
    act = torch.tensor(m.activation_ratio)
    assert 0.2 < act < 0.9  # the window (3) is shorter than the rows' activated tokens: the band matters
    assert_same_function(y, _reference(m, x, mask, window=3), [x, *_params(m)])


def test_a_window_covering_the_activated_tokens_is_full_causal_attention_over_them():
    m, x = _mixer(window=24), _x()
    assert_same_function(m(x), _reference(m, x, window=None), [x, *_params(m)])


def _forced(monkeypatch, activate: bool) -> None:
    """Force the router's decision (every valid token, or none), keeping the gain p_max of the activated ones."""
    def route(logits, temperature, valid=None):
        p_max = torch.softmax(logits / temperature, dim=-1).max(dim=-1).values
        act = valid.clone() if activate else torch.zeros_like(valid)
        return act, p_max.masked_fill(~act, 0.0)

    monkeypatch.setattr(seqboat, "route", route)


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_every_token_activated_is_local_gated_attention_scaled_by_the_gain(monkeypatch, pattern):
    _forced(monkeypatch, activate=True)
    m, x = _mixer(pattern), _x()
    mm, u, hx, valid = _router(m, x, None)
    gain = torch.softmax(u / m.log_temperature.exp(), dim=-1).max(dim=-1).values
    z, r, v = F.silu(m.mx_proj(mm)).split([m.z_dim, m.h_dim, m.h_dim], dim=-1)
    q, k = m.qk(z)
    positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    h = local_biased_attention_ref(q, k, v, positions, valid, left=3, right=0 if m.pattern.is_causal else 3,
                                   bias=m.rel_bias)
    want = F.silu(hx + m.h_proj(h * r) * gain[..., None] + x)
    assert_same_function(m(x), want, [x, *_params(m)])


def test_no_token_activated_gives_silu_of_hx_plus_x_and_never_calls_attention(monkeypatch):
    _forced(monkeypatch, activate=False)

    def no_attention(*args, **kwargs):
        raise AssertionError("attention was called with no activated token")

    monkeypatch.setattr(sparse_ops, "biased_attention", no_attention)
    monkeypatch.setattr(seqboat, "local_biased_attention", no_attention)
    m, x = _mixer(), _x()
    mask = _holes()
    _, _, hx, valid = _router(m, x, mask)
    want = F.silu(hx + x).masked_fill(~valid[..., None], 0.0)
    assert_same_function(m(x, mask=mask), want, [x, *_params(m)])
    with torch.no_grad():
        ys, state = run_schedule(m, x, None, [("stream", 5), ("step", 3), ("stream", 16)], mask=mask)
    torch.testing.assert_close(ys, want.detach())
    assert m.activation_ratio == 0.0 and int(state.cache.seen.max()) == 0


def test_the_router_is_causal_and_streaming_reproduces_its_decisions(monkeypatch):
    decisions = []

    def spy(logits, temperature, valid=None):
        act, gain = sparse_ops.route(logits, temperature, valid)
        decisions.append((act, gain))
        return act, gain

    monkeypatch.setattr(seqboat, "route", spy)
    m, x = _mixer(), _x()
    m(x)
    act, gain = decisions.pop()
    for i in range(0, x.shape[1] - 1, 5):
        (grad,) = torch.autograd.grad(gain[:, : i + 1].sum(), x, retain_graph=True)
        assert grad[:, i + 1:].abs().max() < 1e-12  # the EMA's FFT leaks round-off only
    with torch.no_grad():
        run_schedule(m, x, None, [("stream", 7), ("step", 2), ("stream", 15)])
    assert torch.equal(torch.cat([a for a, _ in decisions], dim=1), act)
    assert m.activation_ratio == pytest.approx(float(decisions[-1][0].float().mean()))


def test_the_decoding_state_keeps_the_last_window_activated_tokens():
    m, x = _mixer(), _x(b=2)
    state = m.init_state(2)
    with torch.no_grad():
        for t in range(x.shape[1]):
            seen = state.cache.seen.clone()
            _, state = m.step(x[:, t], state)
            assert state.num_floats() == m.state_size(t + 1) == D * 4 + (8 + 32) * min(t + 1, 3)
            assert (state.cache.seen - seen <= 1).all()
        assert torch.equal(state.cache.seen, state.positions.seen)
        assert torch.equal(state.n_valid, torch.full((2,), x.shape[1]))
        k, _, valid = state.cache.ordered()
        assert k.shape[2] == 3 and valid.all()
        positions = state.positions.ordered()[0][:, 0, :, 0]
        assert (positions.diff(dim=1) > 0).all() and (positions < x.shape[1]).all()


def test_initial_temperature_and_refusals():
    m = _mixer(init_temp_scale=0.3)
    assert m.log_temperature.exp().item() == pytest.approx(0.3 * D**0.5)
    assert m.h_dim == 2 * D
    for pattern in ("causal_cross", "noncausal_cross"):
        with pytest.raises(PatternNotSupported, match=f"'seqboat' does not support pattern '{pattern}'"):
            build("seqboat", D, pattern=pattern)
    with pytest.raises(InvalidHyper, match="kernel"):
        build("seqboat", D, kernel="laplace2")
    with pytest.raises(InvalidHyper, match="window"):
        build("seqboat", D, window=0)
    m = _mixer(max_len=16)
    with pytest.raises(SequenceTooLong):
        m(_x(length=17))
    state = m.init_state(3)
    _, state = m.forward_stream(_x(length=10).detach(), state)
    with pytest.raises(SequenceTooLong):
        m.forward_stream(_x(length=7).detach(), state)
