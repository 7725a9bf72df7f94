"""LongVQ: the block against itself written out with its own weights (the EMA by ``ema_ref``, the quantiser by
``cdist``, attention as a dense softmax over the quantised keys with the bias on the local pairs — and, for the
gradients through the per-code aggregate, by the ops' oracles), in both patterns, padded rows included; decoding;
block-length invariance with the bias zeroed; learning only in a training forward inside a scope; a bounded state;
no length binding; the cross patterns refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longseq.mixers import PatternNotSupported, build
from longseq.modules.aux_loss import collect_aux_losses
from longseq.ops.ema import ema_ref
from longseq.ops.vq_attention import vq_attention_local_ref, vq_attention_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
D = 16
SMALL = {"z_dim": 4, "h_dim": 8, "ndim": 2, "codebook_size": 6}


def _mixer(pattern: str = "causal_self", seed: int = 0, **hypers):
    """float64, eval; every parameter redrawn at scale 0.5 (MEGA's 0.02 initialisation would leave q·k ~ 0), codes
    drawn around the keys (their offset β₁ plus their spread) and counts away from the quantiser's floor."""
    torch.manual_seed(seed)
    m = build("longvq", D, pattern=pattern, **{**SMALL, **hypers}).double().eval()
    vq = m.attention.quantizer
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.5 * torch.randn_like(p))
        vq.c_count.uniform_(0.5, 2.0)
        vq.c_sum.copy_((m.qk.beta[1] + 0.05 * torch.randn_like(vq.c_sum)) * vq.c_count[..., None])
    return m


def _x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=F64, requires_grad=True)


def _holes(length: int) -> torch.Tensor:
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[0, :3] = mask[0, 9:11] = False
    mask[1, -4:] = False
    mask[2] = False
    return mask


# -- the block written out ----------------------------------------------------------------------------------------


def _ema(m, x: torch.Tensor) -> torch.Tensor:
    """MEGA's context silu(EMA(x) + ω x), both directions including the token itself when non-causal."""
    ema = m.context_module
    e = ema_ref(x, *(getattr(ema.kernels[0], n) for n in ("alpha", "delta", "beta", "eta")))
    if len(ema.kernels) == 2:
        e = e + ema_ref(x.flip(1), *(getattr(ema.kernels[1], n) for n in ("alpha", "delta", "beta", "eta"))).flip(1)
    return F.silu(e + ema.D * x)


def _quantised(m, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k: (1, L, z) -> codebook (S, z), codes (1, L), k̂ (1, L, z) with the straight-through gradient."""
    vq = m.attention.quantizer
    codebook = (vq.c_sum / vq.c_count[..., None])[0]
    z = torch.cdist(k.detach(), codebook[None]).argmin(-1)
    return codebook, z, codebook[z] + (k - k.detach())


def _table(m, query_minus_key: torch.Tensor) -> torch.Tensor:
    """MEGA's relative bias table at key - query (stored at index key - query + P - 1)."""
    p = m.attention.bias.max_positions
    return m.attention.bias.weight[-query_minus_key + p - 1]


def _dense_attention(m, q, k, v):
    """One row: softmax over every visible quantised key of z^-1/2 q·k̂ + the bias where the valid-token blocks of
    query and key differ by at most 1 (local); the causal mask when causal."""
    _, _, k_hat = _quantised(m, k)
    length, w = q.shape[1], m.attention.block_len
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    visible = (j <= i) if m.pattern.is_causal else torch.ones(length, length, dtype=torch.bool)
    local = visible & ((i // w - j // w).abs() <= 1)
    bias = torch.where(local, _table(m, (i - j).clamp(-(2 * w - 1), 2 * w - 1)), 0.0)
    scores = (q @ k_hat.transpose(-1, -2) / m.z_dim ** 0.5 + bias).masked_fill(~visible, float("-inf"))
    return scores.softmax(-1) @ v


def _oracle_attention(m, q, k, v):
    """One row through the ops' dense oracles, which also spell out the gradient through the per-code aggregate."""
    codebook, z, k_hat = _quantised(m, k)
    w = m.attention.block_len
    if m.pattern.is_causal:
        bias = _table(m, torch.arange(2 * w))
        o = vq_attention_ref(q[:, None], k_hat[:, None], v[:, None], z[:, None], codebook[None], causal=True,
                             block_len=w, recent_bias=bias)
    else:
        bias = _table(m, torch.arange(4 * w - 1) - (2 * w - 1))
        o = vq_attention_local_ref(q[:, None], k_hat[:, None], v[:, None], z[:, None], codebook[None], block_len=w,
                                   local_bias=bias)
    return o[:, 0]


def _block_ref(m, x: torch.Tensor, attention) -> torch.Tensor:
    """One row's valid tokens x: (1, L, D) through the block written out (MEGA's gates around ``attention``)."""
    d, z, h = D, m.z_dim, m.h_dim
    v = F.silu(x @ m.v_proj.weight.T + m.v_proj.bias)
    base = _ema(m, x) @ m.mx_proj.weight.T + m.mx_proj.bias
    u, zr, hx = torch.sigmoid(base[..., :d]), F.silu(base[..., d:d + z + h]), base[..., d + z + h:]
    zz, r = zr[..., :z], zr[..., z:]
    q, k = zz * m.qk.gamma[0] + m.qk.beta[0], zz * m.qk.gamma[1] + m.qk.beta[1]
    hidden = F.silu(hx + (attention(m, q, k, v) * r) @ m.h_proj.weight.T + m.h_proj.bias)
    return u * (hidden - x)


def _longvq_ref(m, x: torch.Tensor, mask: torch.Tensor | None, attention) -> torch.Tensor:
    """Each row's valid tokens alone through the written-out block, 0 at masked positions."""
    rows = []
    for b in range(x.shape[0]):
        keep = torch.arange(x.shape[1]) if mask is None else mask[b].nonzero().flatten()
        out = _block_ref(m, x[b:b + 1, keep], attention)[0] if len(keep) else x.new_zeros(0, D)
        rows.append(x.new_zeros(x.shape[1:]).index_put((keep,), out))
    return torch.stack(rows)


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize("block_len", [2, 3, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_longvq_is_its_block_written_out(pattern, block_len, masked):
    m = _mixer(pattern, block_len=block_len)
    x, mask = _x(3, 17), (_holes(17) if masked else None)
    got = m(x, mask=mask)
    z = m.attention.quantizer(m._gates(x, m.context_module(x, mask=mask))[1][:, None], mask)[1]
    assert len(z[mask[:, None]].unique() if masked else z.unique()) > 2, "the keys must spread over several codes"
    torch.testing.assert_close(got, _longvq_ref(m, x, mask, _dense_attention), atol=1e-12, rtol=1e-10)
    assert_same_function(got, _longvq_ref(m, x, mask, _oracle_attention), [x, *m.parameters()])


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_a_window_covering_the_sequence_is_dense_attention_in_values_and_gradients(pattern):
    """block_len >= L: every key is local, scored individually, so the straight-through gradient is the dense one."""
    m = _mixer(pattern, block_len=17)
    x, mask = _x(3, 17), _holes(17)
    assert_same_function(m(x, mask=mask), _longvq_ref(m, x, mask, _dense_attention), [x, *m.parameters()])


# -- decoding, block length, learning, state, refusals -------------------------------------------------------------


@pytest.mark.parametrize("block_len", [1, 3])
def test_stream_and_step_equal_parallel(block_len):
    m = _mixer(block_len=block_len)
    x, mask = _x(3, 19).detach(), _holes(19)
    want = m(x, mask=mask)
    state, outs, t = m.init_state(3), [], 0
    for n in (5, 1, 1, 7, 1, 4):  # chunks and single tokens (step) mixed
        if n == 1:
            y, state = m.step(x[:, t], state, mask_t=mask[:, t])
            outs.append(y[:, None])
        else:
            y, state = m.forward_stream(x[:, t:t + n], state, mask=mask[:, t:t + n])
            outs.append(y)
        t += n
    torch.testing.assert_close(torch.cat(outs, dim=1), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_block_length_invariance_with_the_bias_zeroed(pattern):
    """Without the bias the local window only changes which keys are scored individually, not the function."""
    x, mask = _x(3, 23).detach(), _holes(23)
    reference = _mixer(pattern, block_len=1)
    weights = {n: t for n, t in reference.state_dict().items() if n != "attention.bias.weight"}
    outs = []
    for w in (1, 2, 5, 23, 40):
        m = _mixer(pattern, block_len=w)
        m.load_state_dict(weights, strict=False)
        with torch.no_grad():
            m.attention.bias.weight.zero_()
        outs.append(m(x, mask=mask))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=0)
    with torch.no_grad():  # and the bias does act
        m.attention.bias.weight.normal_()
    assert (m(x, mask=mask) - outs[-1]).abs().max() > 1e-3


def _buffers(m):
    return {n: b.clone() for n, b in m.named_buffers()}


def _same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_codebook_learns_only_in_a_training_forward_inside_a_scope(pattern):
    m = _mixer(pattern, block_len=3)
    x = _x(2, 12).detach()
    start = _buffers(m)
    with collect_aux_losses() as aux:
        m(x)  # eval
    assert aux.total() is None and _same(_buffers(m), start)
    m.train()
    m(x)  # no scope: a bare mixer in train() is a fixed function
    assert _same(_buffers(m), start)
    if pattern == "causal_self":
        with collect_aux_losses() as aux:
            state = m.init_state(2)
            _, state = m.forward_stream(x[:, :7], state)
            m.step(x[:, 7], state)
        assert aux.total() is None and _same(_buffers(m), start)
    with collect_aux_losses() as aux:
        m(x)
    assert set(aux.values) == {"vq_commit"} and not _same(_buffers(m), start)


def test_state_is_bounded_whatever_the_length():
    m = _mixer(block_len=3)
    sizes = [m.state_size(n) for n in range(1, 200)]
    codes, z, h, w = 6, 4, 8, 3
    assert max(sizes) == D * 2 + codes * (1 + z + h) + (2 * w - 1) * (z + h)
    state = m.init_state(1)
    for n in range(1, 12):
        _, state = m.step(torch.randn(1, D, dtype=F64), state)
        assert state.num_floats() == m.state_size(n)


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_not_bound_to_a_length_and_cross_refused(pattern):
    m = _mixer(pattern, block_len=2)
    assert m.max_len is None and m.attention.bias.max_positions == 4
    assert torch.isfinite(m(torch.randn(2, 70, D, dtype=F64))).all()
    for cross in ("causal_cross", "noncausal_cross"):
        with pytest.raises(PatternNotSupported, match=f"'longvq' does not support pattern '{cross}'"):
            build("longvq", D, pattern=cross)
