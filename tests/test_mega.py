"""MEGA and TCNCA: MEGA against its block written out with its own weights (the EMA by ``ema_ref``, attention by
the one-query-at-a-time oracle, RoPE by the complex oracle), in both patterns, full and chunked, each kernel and
position scheme, padded rows included; the degenerate limit (a chunk covering the sequence is full MEGA); chunk
locality with the EMA silenced (a token depends on exactly its chunk, counted in valid tokens); decoding; TCNCA's
receptive field and its exact dependency pattern (convolution reach ∪ own chunk); refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longseq.mixers import InvalidHyper, SequenceTooLong, build
from longseq.ops.biased_attention import biased_attention_ref
from longseq.ops.ema import ema_ref
from longseq.ops.rotary import apply_rotary_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
D = 16
SMALL = {"z_dim": 4, "h_dim": 8}


def _mixer(name: str, pattern: str = "causal_self", seed: int = 0, **hypers):
    """float64, eval, and every parameter redrawn at scale 0.5: MEGA's 0.02 initialisation would leave q·k ~ 0."""
    torch.manual_seed(seed)
    m = build(name, D, pattern=pattern, **SMALL, **hypers).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return m


def _x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=F64, requires_grad=True)


def _ema(m, x: torch.Tensor) -> torch.Tensor:
    """MEGA's context m = silu(EMA(x) + ω x), both directions including the token itself when non-causal."""
    ema = m.context_module
    e = ema_ref(x, *(getattr(ema.kernels[0], n) for n in ("alpha", "delta", "beta", "eta")))
    if len(ema.kernels) == 2:
        e = e + ema_ref(x.flip(1), *(getattr(ema.kernels[1], n) for n in ("alpha", "delta", "beta", "eta"))).flip(1)
    return F.silu(e + ema.D * x)


def _block_ref(m, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """One row's valid tokens x: (1, L, D) through the MEGA block written out, given its context m."""
    d, z, h = D, m.z_dim, m.h_dim
    v = F.silu(x @ m.v_proj.weight.T + m.v_proj.bias)
    base = context @ m.mx_proj.weight.T + m.mx_proj.bias
    u, zr, hx = torch.sigmoid(base[..., :d]), F.silu(base[..., d:d + z + h]), base[..., d + z + h:]
    zz, r = zr[..., :z], zr[..., z:]
    q, k = zz * m.qk.gamma[0] + m.qk.beta[0], zz * m.qk.gamma[1] + m.qk.beta[1]
    length = x.shape[1]
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    part = m.attention
    visible = torch.ones(length, length, dtype=torch.bool)
    if part.chunk is not None:
        visible &= i // part.chunk == j // part.chunk
    if m.pattern.is_causal:
        visible &= j <= i
    q, k = q[:, None], k[:, None]
    bias = None
    if part.bias is not None:  # offsets within the chunk are offsets of positions: a chunk starts at a multiple of c
        p = part.bias.max_positions
        bias = part.bias.weight[(j - i).clamp(-(p - 1), p - 1) + p - 1]
    else:
        positions = torch.arange(length).expand(x.shape[0], -1)
        q, k = apply_rotary_ref(q, positions), apply_rotary_ref(k, positions)
    o = biased_attention_ref(q, k, v[:, None], visible, bias=bias, kernel=part.kernel)[:, 0]
    hidden = F.silu(hx + (o * r) @ m.h_proj.weight.T + m.h_proj.bias)
    return u * (hidden - x)


def _mega_ref(m, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Each row's valid tokens alone through the written-out block, 0 at masked positions."""
    if mask is None:
        return _block_ref(m, x, _ema(m, x))
    rows = []
    for b in range(x.shape[0]):
        keep = mask[b].nonzero().flatten()
        row = x[b:b + 1, keep]
        out = _block_ref(m, row, _ema(m, row))[0] if len(keep) else x.new_zeros(0, D)
        rows.append(x.new_zeros(x.shape[1:]).index_put((keep,), out))
    return torch.stack(rows)


def _holes(length: int) -> torch.Tensor:
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[0, :3] = mask[0, 9:11] = False
    mask[1, -4:] = False
    mask[2] = False
    return mask


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize(("chunk_size", "attention", "positions"), [
    (None, "softmax", "bias"), (5, "softmax", "bias"), (4, "laplace", "rotary"), (None, "relu2", "rotary"),
    (6, "relu2", "bias"),
])
@pytest.mark.parametrize("masked", [False, True])
def test_mega_is_its_block_written_out(pattern, chunk_size, attention, positions, masked):
    m = _mixer("mega", pattern, ndim=3, chunk_size=chunk_size, attention=attention, positions=positions)
    x = _x(3, 17)
    mask = _holes(17) if masked else None
    assert_same_function(m(x, mask=mask), _mega_ref(m, x, mask), [x, *m.parameters()])


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize("chunk_size", [20, 64])
def test_a_chunk_covering_the_sequence_is_full_mega(pattern, chunk_size):
    chunked = _mixer("mega", pattern, ndim=2, chunk_size=chunk_size, max_positions=64)
    full = _mixer("mega", pattern, ndim=2, max_positions=64)
    full.load_state_dict(chunked.state_dict())
    x, mask = _x(3, 20), _holes(20)
    torch.testing.assert_close(chunked(x, mask=mask), full(x, mask=mask), atol=1e-12, rtol=0)


def _jacobian_support(m, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """bool (L, L) for row 0: output i depends on input j (|d y_i / d x_j| > 1e-10)."""
    jac = torch.autograd.functional.jacobian(lambda t: m(t, mask=mask)[0], x.detach())  # (L, D, B, L, D)
    return jac[:, :, 0].abs().amax(dim=(1, 3)) > 1e-10


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_without_the_ema_a_token_sees_exactly_its_chunk_of_valid_tokens(pattern):
    """η = ω = 0 silences the EMA (m = silu(0)): the only path between tokens is then the chunked attention, so
    output i depends on input j exactly when both are valid and in the same chunk of valid tokens (j <= i causal)."""
    m = _mixer("mega", pattern, ndim=2, chunk_size=4)
    with torch.no_grad():
        for kernel in m.context_module.kernels:
            kernel.eta.zero_()
        m.context_module.D.zero_()
    mask = torch.ones(1, 14, dtype=torch.bool)
    mask[0, [2, 7, 8]] = False  # holes: chunks are counted in valid tokens
    got = _jacobian_support(m, _x(1, 14), mask)
    rank = mask[0].long().cumsum(0) - 1
    want = (rank[:, None] // 4 == rank[None, :] // 4) & mask[0][:, None] & mask[0][None, :]
    if pattern == "causal_self":
        want &= rank[None, :] <= rank[:, None]
    assert torch.equal(got, want)
    # With the EMA back, information crosses chunks.
    torch.manual_seed(0)
    assert _jacobian_support(_mixer("mega", pattern, ndim=2, chunk_size=4), _x(1, 14), mask)[13, 0]


def test_the_attention_part_alone_is_chunk_local():
    """Perturbing q, k, v of one chunk changes the attention outputs of that chunk only."""
    part = _mixer("mega", "causal_self", ndim=2, chunk_size=5).attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 15, n, generator=g, dtype=F64) for n in (4, 4, 8))
    base = part(q, k, v, None)
    for t in (q, k, v):
        t2 = t.clone()
        t2[:, 5:10] += 1.0
        moved = (part(*(t2 if s is t else s for s in (q, k, v)), None) - base).abs().amax(dim=(0, 2)) > 0
        assert not moved[:5].any() and not moved[10:].any() and moved[5:10].any()


@pytest.mark.parametrize("name", ["mega", "tcnca"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_decoding_equals_parallel(name, chunk_size):
    if name == "tcnca" and chunk_size is None:
        chunk_size = 32  # TCNCA is always chunked: one chunk covering the sequence
    hypers = {"ndim": 2} if name == "mega" else {"n_layers": 2}
    m = _mixer(name, chunk_size=chunk_size, **hypers)
    x, mask = _x(3, 13).detach(), _holes(13)
    want = m(x, mask=mask)
    state = m.init_state(3)
    y_prefill, state = m.forward_stream(x[:, :6], state, mask=mask[:, :6])
    steps = []
    for t in range(6, 13):
        y_t, state = m.step(x[:, t], state, mask_t=mask[:, t])
        steps.append(y_t)
    torch.testing.assert_close(torch.cat([y_prefill, torch.stack(steps, 1)], 1), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("hypers", "receptive_field"), [
    ({"kernel_size": 3, "n_layers": 2}, 7), ({"kernel_size": 5, "n_layers": 3, "dilation_base": 2}, 29),
    ({"kernel_size": 3, "n_layers": 3, "dilation_base": 1}, 7), ({"kernel_size": 2, "n_layers": 4}, 16),
])
def test_tcnca_receptive_field(hypers, receptive_field):
    k, n, f = hypers["kernel_size"], hypers["n_layers"], hypers.get("dilation_base", 2)
    formula = 1 + (k - 1) * ((f**n - 1) // (f - 1) if f > 1 else n)
    assert build("tcnca", D, chunk_size=4, **hypers).receptive_field == formula == receptive_field


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_tcnca_depends_on_its_convolution_reach_and_its_chunk_only(pattern):
    """Output i depends on input j exactly when j is within the TCN's reach of i (the R tokens up to i, or centred
    on i) or in i's chunk (and j <= i when causal): zero beyond, and non-zero inside, so the test fails both ways."""
    m = _mixer("tcnca", pattern, kernel_size=3, n_layers=2, chunk_size=4)
    r, length = m.receptive_field, 24
    got = _jacobian_support(m, _x(1, length))
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    if pattern == "causal_self":
        reach, sees = (j <= i) & (i - j < r), (i // 4 == j // 4) & (j <= i)
    else:
        reach, sees = (i - j).abs() <= (r - 1) // 2, i // 4 == j // 4
    # i reads the keys and values of the tokens it sees (itself included), each made from its own reach.
    want = (sees.double() @ reach.double()) > 0
    assert torch.equal(got, want)
    first = length - 4 - r + 1 if pattern == "causal_self" else length - 4 - (r - 1) // 2  # the last chunk's reach
    assert not got[length - 1, :first].any() and got[length - 1, first]


def test_state_holds_the_current_chunk_only():
    m = build("mega", D, ndim=2, chunk_size=4, **SMALL)
    state = m.init_state(1)
    for length in range(1, 10):
        _, state = m.step(torch.randn(1, D), state)
        assert state.num_floats() == m.state_size(length) == D * 2 + (4 + 8) * ((length - 1) % 4 + 1)


def test_refusals():
    with pytest.raises(InvalidHyper, match=r"max_positions=3 must be >= chunk_size=5"):
        build("mega", D, chunk_size=5, max_positions=3)
    with pytest.raises(InvalidHyper, match=r"max_positions=8 must be >= max_len=16"):
        build("mega", D, max_len=16, max_positions=8)
    with pytest.raises(InvalidHyper, match=r"max_positions=8 sizes the relative bias.*positions='rotary'"):
        build("mega", D, positions="rotary", max_positions=8)
    with pytest.raises(InvalidHyper, match=r"positions='rotary' needs an even z_dim, got z_dim=5"):
        build("mega", D, positions="rotary", z_dim=5)
    with pytest.raises(InvalidHyper, match=r"kernel_size=4 must be odd in pattern 'noncausal_self'"):
        build("tcnca", D, pattern="noncausal_self", kernel_size=4)
    with pytest.raises(InvalidHyper, match=r"attention=.*'softmax', 'laplace' or 'relu2'"):
        build("mega", D, attention="relu")
    # Unchunked, the bias table binds the length: max_positions (default 1024) is then the mixer's max_len.
    m = build("mega", D, ndim=2, max_positions=8, **SMALL)
    assert m.max_len == 8 and build("mega", D).max_len == 1024 and build("mega", D, chunk_size=4).max_len is None
    with pytest.raises(SequenceTooLong, match="length 9"):
        m(torch.randn(1, 9, D))
    assert math.isfinite(m(torch.randn(1, 8, D)).sum().item())
