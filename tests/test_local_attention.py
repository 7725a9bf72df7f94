"""Sliding-window and block-local attention: each mixer against its function written out with its own weights (RoPE
by the complex oracle, attention by the dense-mask oracles), the degenerate limits (a window or a chunk covering the
sequence is full attention), locality (a token's output depends on exactly its window or its chunk, counted in valid
tokens), decoding against the parallel form with windows shorter and longer than the stream chunks, the memory of
the decoding state, refusals."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from longseq.mixers import InvalidHyper, PatternNotSupported, SequenceTooLong, build
from longseq.ops.attention import block_local_attention_ref, sliding_window_attention_ref, softmax_attention_ref
from longseq.ops.rotary import apply_rotary_ref
from longseq.testing.inputs import run_schedule
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
D_MODEL = 16
SPAN = {"sliding_window": "window", "block_local": "chunk"}
REF = {"sliding_window": sliding_window_attention_ref, "block_local": block_local_attention_ref}


def _mixer(name: str, span: int, pattern: str = "causal_self", seed: int = 0, **hypers):
    torch.manual_seed(seed)
    return build(name, D_MODEL, pattern=pattern, n_heads=2, **{SPAN[name]: span}, **hypers).double().eval()


def _holes(batch: int, length: int) -> torch.Tensor:
    """Row 0 left padding and holes, row 1 (if any) right padding, row 2 (if any) no valid token."""
    mask = torch.ones(max(batch, 3), length, dtype=torch.bool)
    mask[0, :3] = False
    mask[0, 8:11] = False
    mask[0, length - 5] = False
    mask[1, length - 6:] = False
    mask[2] = False
    return mask[:batch]


def _qkv(m, x, mask):
    """The mixer's queries, keys and values with its own weights, rotated by the complex-number oracle."""
    def heads(w):
        return rearrange(x @ w.T, "b l (h d) -> b h l d", h=m.n_heads)

    q, k, v = heads(m.q_proj.weight), heads(m.k_proj.weight), heads(m.v_proj.weight)
    if m.use_rope:
        pos = torch.arange(x.shape[1]).expand(x.shape[0], -1) if mask is None else (mask.cumsum(1) - 1).clamp(min=0)
        q, k = apply_rotary_ref(q, pos), apply_rotary_ref(k, pos)
    return q, k, v


def _out(m, o):
    return rearrange(o, "b h l d -> b l (h d)") @ m.out_proj.weight.T


@pytest.mark.parametrize("name", ["sliding_window", "block_local"])
@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize("rope", [True, False])
def test_mixer_matches_explicit_computation(name, pattern, rope):
    m = _mixer(name, 4, pattern, rope=rope)
    x = torch.randn(3, 19, D_MODEL, dtype=F64, requires_grad=True)
    mask = _holes(3, 19)
    q, k, v = _qkv(m, x, mask)
    want = _out(m, REF[name](q, k, v, **{SPAN[name]: 4}, causal=pattern == "causal_self", valid=mask))
    assert_same_function(m(x, mask=mask), want, [x, *m.parameters()])


@pytest.mark.parametrize("name", ["sliding_window", "block_local"])
@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize("span", [19, 40])
def test_span_covering_the_sequence_is_full_attention(name, pattern, span):
    """Against softmax_attention_ref on the mixer's own q/k/v, and against the attention mixer with the same weights."""
    m = _mixer(name, span, pattern)
    x = torch.randn(3, 19, D_MODEL, dtype=F64)
    mask = _holes(3, 19)
    q, k, v = _qkv(m, x, mask)
    full = _out(m, softmax_attention_ref(q, k, v, causal=pattern == "causal_self", q_valid=mask, k_valid=mask))
    y = m(x, mask=mask)
    torch.testing.assert_close(y, full)
    attention = build("attention", D_MODEL, pattern=pattern, n_heads=2).double().eval()
    attention.load_state_dict(m.state_dict())
    torch.testing.assert_close(y, attention(x, mask=mask))


def _valid_index(mask: torch.Tensor) -> torch.Tensor:
    return mask.long().cumsum(0) - 1


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_outputs_of_a_chunk_are_invariant_to_other_chunks(pattern):
    """Perturbing every valid token outside a chunk (and every padded token) leaves that chunk's outputs exactly
    unchanged; perturbing one of its own tokens changes them. Chunks count valid tokens."""
    c = 4
    m = _mixer("block_local", c, pattern)
    x = torch.randn(2, 23, D_MODEL, dtype=F64)
    mask = _holes(2, 23)
    y = m(x, mask=mask)
    for b in range(2):
        chunk_of = torch.where(mask[b], _valid_index(mask[b]) // c, -1)
        for k in range(int(chunk_of.max()) + 1):
            inside = chunk_of == k
            x2 = x.clone()
            x2[b, ~inside] += torch.randn_like(x2[b, ~inside])
            torch.testing.assert_close(m(x2, mask=mask)[b, inside], y[b, inside], atol=1e-12, rtol=0)
            x3 = x.clone()
            x3[b, inside.nonzero()[-1]] += 1.0
            assert (m(x3, mask=mask)[b, inside] - y[b, inside]).abs().max() > 1e-6 or inside.sum() == 1


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_a_token_depends_on_exactly_its_window_of_valid_tokens(pattern):
    """d y_i / d x_j != 0 exactly for the valid j within w - 1 valid tokens of i (before i only, when causal)."""
    w = 3
    m = _mixer("sliding_window", w, pattern)
    x = torch.randn(1, 20, D_MODEL, dtype=F64, requires_grad=True)
    mask = _holes(1, 20)
    rank = _valid_index(mask[0])
    y = m(x, mask=mask)
    for i in mask[0].nonzero().flatten().tolist():
        (grad,) = torch.autograd.grad(y[0, i].sum(), x, retain_graph=True)
        reached = grad[0].abs().sum(dim=-1) > 0
        dist = rank[i] - rank
        window = mask[0] & (dist < w) & ((dist >= 0) if pattern == "causal_self" else (dist > -w))
        assert reached.tolist() == window.tolist(), f"token {i}"


@pytest.mark.parametrize("name", ["sliding_window", "block_local"])
@pytest.mark.parametrize("span", [3, 7, 30])
@pytest.mark.parametrize("masked", [False, True])
def test_decode_equals_parallel_for_spans_shorter_and_longer_than_the_chunks(name, span, masked):
    """Stream chunks of 1 to 14 tokens and single steps, around spans of 3 (chunks longer), 7 and 30 (chunks
    shorter), with holes and an empty row: each equals forward."""
    m = _mixer(name, span)
    x = torch.randn(3, 40, D_MODEL, dtype=F64)
    mask = _holes(3, 40) if masked else None
    want = m(x, mask=mask)
    schedules = [
        [("stream", 14), ("stream", 1), ("stream", 9), ("step", 4), ("stream", 12)],
        [("step", 5), ("stream", 2), ("stream", 3), ("stream", 11), ("step", 2), ("stream", 17)],
        [("stream", 40)],
        [("step", 40)],
    ]
    with torch.no_grad():
        for schedule in schedules:
            got, _ = run_schedule(m, x, None, schedule, mask=mask)
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0, msg=lambda s, sch=schedule: f"{sch}: {s}")


@pytest.mark.parametrize(("name", "span", "held"), [("sliding_window", 8, 8), ("block_local", 8, (200 - 1) % 8 + 1)])
def test_decoding_state_is_the_window_in_one_buffer(name, span, held):
    m = _mixer(name, span)
    state = m.init_state(2)
    ptr = state.cache.k_buf.data_ptr()
    with torch.no_grad():
        for _ in range(200):
            _, state = m.step(torch.randn(2, D_MODEL, dtype=F64), state)
    assert state.cache.k_buf.data_ptr() == ptr and state.cache.k_buf.shape[2] == span + 1
    assert state.num_floats() == m.state_size(200) == 2 * D_MODEL * held


def test_block_local_state_holds_the_current_chunk():
    m = _mixer("block_local", 5)
    assert [m.state_size(n) for n in range(12)] == [2 * D_MODEL * n for n in (0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1)]


@pytest.mark.parametrize("name", ["sliding_window", "block_local"])
def test_max_len_bounds_the_cache_and_the_stream(name):
    """A window far beyond max_len allocates only max_len slots, loses nothing, and refuses token max_len + 1."""
    m = _mixer(name, 1000)
    x = torch.randn(2, 10, D_MODEL, dtype=F64)
    state = m.init_state(2, max_len=10)
    assert state.cache.k_buf.shape[2] == 11
    with torch.no_grad():
        got, state = run_schedule(m, x, None, [("stream", 6), ("step", 4)], state=state)
        torch.testing.assert_close(got, m(x))
        with pytest.raises(SequenceTooLong, match="11"):
            m.step(x[:, 0], state)


@pytest.mark.parametrize("name", ["sliding_window", "block_local"])
@pytest.mark.parametrize("pattern", ["causal_cross", "noncausal_cross"])
def test_cross_patterns_are_refused(name, pattern):
    with pytest.raises(PatternNotSupported, match=f"'{name}' does not support pattern '{pattern}'.*causal_self"):
        build(name, D_MODEL, pattern=pattern)


@pytest.mark.parametrize("name", ["sliding_window", "block_local"])
def test_invalid_hypers_are_refused_naming_the_value(name):
    with pytest.raises(InvalidHyper, match=f"{SPAN[name]}=0"):
        build(name, D_MODEL, **{SPAN[name]: 0})
    with pytest.raises(InvalidHyper, match=r"RoPE needs an even head size.*=3"):
        build(name, 12, n_heads=4)
    assert build(name, 12, n_heads=4, rope=False).head_dim == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["sliding_window", "block_local"])
@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_cuda_matches_cpu(name, pattern):
    torch.manual_seed(0)
    m = build(name, 32, pattern=pattern, n_heads=4, **{SPAN[name]: 7}).eval()
    x = torch.randn(3, 40, 32)
    mask = _holes(3, 40)
    want = m(x, mask=mask)
    m = m.cuda()
    torch.testing.assert_close(m(x.cuda(), mask=mask.cuda()).cpu(), want, atol=1e-4, rtol=1e-4)
    if pattern == "causal_self":
        with torch.no_grad():
            got, _ = run_schedule(m, x.cuda(), None, [("stream", 13), ("step", 5), ("stream", 22)], mask=mask.cuda())
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
