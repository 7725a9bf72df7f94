"""The transformer_ls mixer against its function written out with its own weights — each row's valid tokens alone,
RoPE by the complex oracle, the compression by the chunk-at-a-time oracle over the whole row, the attention by the
query-at-a-time oracles — in both patterns; the degenerate limit (window >= L, rank 0 = full attention); defaults
and refusals."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from longseq.mixers import InvalidHyper, PatternNotSupported, build
from longseq.ops.attention import softmax_attention_ref
from longseq.ops.long_short import (
    causal_long_short_attention_ref,
    chunk_compress_ref,
    long_short_attention_ref,
)
from longseq.ops.rotary import apply_rotary_ref
from longseq.testing.oracle import assert_same_function


def _row_parts(m, xv):
    """Rows of valid tokens xv: (B, n, D) -> the head splitter, q (unrotated), q and window keys rotated, window
    values, raw keys and raw values, all (B, H, n, dh)."""
    def heads(t):
        return rearrange(t, "b l (h d) -> b h l d", h=m.n_heads)
    q, k_raw, v_raw = (xv @ w.weight.T for w in (m.q_proj, m.k_proj, m.v_proj))
    q, k, v = heads(q), heads(m.ln_window(k_raw)), heads(m.ln_window(v_raw))
    q_rot = q
    if m.rope:
        pos = torch.arange(xv.shape[1]).expand(xv.shape[0], -1)
        q_rot, k = apply_rotary_ref(q, pos), apply_rotary_ref(k, pos)
    return heads, q, q_rot, k, v, heads(k_raw), heads(v_raw)


def _explicit(m, x, mask):
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        xv = x[b: b + 1, mask[b]]
        n = xv.shape[1]
        if n == 0:
            continue
        heads, q, q_rot, k, v, k_raw, v_raw = _row_parts(m, xv)
        k_bar = v_bar = k[:, :, :0]
        if m.rank:
            logits = rearrange(xv @ m.projection.weight.T, "b l (h r) -> b h l r", h=m.n_heads)
            chunk = m.chunk_size if m.pattern.is_causal else n
            k_bar, v_bar = (heads(m.ln_compressed(rearrange(chunk_compress_ref(logits, t, None, chunk),
                                                            "b h n r d -> b (n r) (h d)")))
                            for t in (k_raw, v_raw))
        if m.pattern.is_causal:
            n_vis = (torch.arange(n) // m.chunk_size * m.rank)[None]  # the complete chunks before each query
            o = causal_long_short_attention_ref(q_rot, k, v, k_bar, v_bar, window=m.window, n_bar_visible=n_vis,
                                                q_bar=q)
        else:
            o = long_short_attention_ref(q_rot, k, v, k_bar, v_bar, window=m.window, q_bar=q)
        out[b, mask[b]] = (rearrange(o, "b h l d -> b l (h d)") @ m.out_proj.weight.T)[0]
    return out


CONFIGS = [
    {"window": 3, "rank": 2, "chunk_size": 4},
    {"window": 4, "rank": 1, "chunk_size": 1, "rope": False},
    {"window": 2, "rank": 0, "chunk_size": 3},
    {"window": 1, "rank": 2, "chunk_size": 2},
]


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
@pytest.mark.parametrize("hypers", CONFIGS)
@pytest.mark.parametrize("masked", [False, True])
def test_mixer_matches_explicit_computation(pattern, hypers, masked):
    torch.manual_seed(0)
    m = build("transformer_ls", 16, pattern=pattern, n_heads=2, **hypers).double().eval()
    x = torch.randn(3, 14, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 14, dtype=torch.bool)
    if masked:
        mask[0, :5] = False
        mask[1, [1, 6, 7, 12]] = False
        mask[2, 10:] = False
    assert_same_function(m(x, mask=mask), _explicit(m, x, mask), [x, *m.parameters()])


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_a_window_covering_the_sequence_without_projections_is_full_attention(pattern):
    torch.manual_seed(0)
    m = build("transformer_ls", 16, pattern=pattern, n_heads=2, window=20, rank=0).double().eval()
    x = torch.randn(2, 20, 16, dtype=torch.float64, requires_grad=True)
    _, _, q_rot, k, v, _, _ = _row_parts(m, x)
    o = softmax_attention_ref(q_rot, k, v, causal=m.pattern.is_causal)
    want = rearrange(o, "b h l d -> b l (h d)") @ m.out_proj.weight.T
    assert_same_function(m(x), want, [x, *m.parameters()])


def test_streaming_state_keeps_the_window_the_partial_chunk_and_the_compressed_chunks():
    torch.manual_seed(0)
    m = build("transformer_ls", 16, n_heads=2, window=4, rank=2, chunk_size=5).double().eval()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    y, state = m.forward_stream(x, m.init_state(2))
    assert state.window.shape[1] == 3 and state.partial.shape[1] == 23 % 5  # the window's other 3 keys
    assert state.compressed.shape[1] == 23 // 5 * 2
    assert state.num_floats() == m.state_size(23)
    torch.testing.assert_close(y, m(x), atol=1e-12, rtol=0)


def test_rank_defaults_follow_cab():
    assert build("transformer_ls", 64, pattern="noncausal_self").rank == 16
    assert build("transformer_ls", 64, pattern="causal_self").rank == 1


def test_refusals():
    with pytest.raises(InvalidHyper, match="RoPE needs an even head size"):
        build("transformer_ls", 6, n_heads=2)
    for pattern in ("causal_cross", "noncausal_cross"):
        with pytest.raises(PatternNotSupported, match="causal_self, noncausal_self"):
            build("transformer_ls", 16, pattern=pattern)
