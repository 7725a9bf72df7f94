"""Vector-quantised attention: the blockwise causal form, the aggregated form, the one-token update and LongVQ's
non-causal local form against the dense oracles (outputs, final states and gradients, float64), for any block length
and length, with masks, empty rows and the recent / local bias; the oracles themselves against plain softmax
attention over the quantised keys (with a code per key, the local form is biased softmax attention)."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.attention import softmax_attention_ref
from longseq.ops.biased_attention import biased_attention_ref
from longseq.ops.vq_attention import (
    aggregate_attention,
    code_aggregate,
    held,
    vq_attention,
    vq_attention_chunked,
    vq_attention_local,
    vq_attention_local_ref,
    vq_attention_ref,
    vq_attention_update,
)
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
H, DK, DV, S = 2, 4, 3, 5


def _inputs(b=2, length=13, seed=0):
    """q, k_hat (a leaf whose value is the codebook row of its code), v, z, codebook."""
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(H, S, DK, generator=g, dtype=F64)
    z = torch.randint(0, S, (b, H, length), generator=g)
    k_hat = codebook[torch.arange(H)[None, :, None], z].clone().requires_grad_()
    q = torch.randn(b, H, length, DK, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(b, H, length, DV, generator=g, dtype=F64, requires_grad=True)
    return q, k_hat, v, z, codebook


def _valid(kind: str, b: int, length: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[0, : length // 3] = False  # left padding
    if kind == "holes":
        valid[1, length // 2: length // 2 + 3] = False
        if b > 2:
            valid[2] = False  # a row with no valid token
    return valid


def _bias(kind: str, block_len: int, seed: int = 3) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    shape = {"none": None, "shared": (2 * block_len,), "per_head": (H, 2 * block_len)}[kind]
    return None if shape is None else torch.randn(shape, generator=g, dtype=F64).requires_grad_()


def _leaves(q, k_hat, v, bias):
    return [q, k_hat, v] + ([bias] if bias is not None else [])


# -- the oracle -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_reference_is_softmax_attention_over_the_codebook_rows(causal):
    """In value, the oracle is plain softmax attention over C[z]; so are its gradients w.r.t. q and v."""
    q, k_hat, v, z, codebook = _inputs(b=3)
    valid = _valid("holes", 3, 13)
    got = vq_attention_ref(q, k_hat, v, z, codebook, causal=causal, q_valid=valid, k_valid=valid,
                           block_len=3 if causal else None)
    want = softmax_attention_ref(q, k_hat.detach(), v, causal=causal, q_valid=valid, k_valid=valid)
    assert_same_function(got, want, [q, v])


def test_reference_with_every_key_recent_is_the_dense_straight_through_gradient():
    """block_len >= L: every key is in the recent set, so k_hat gets the dense form's gradient too."""
    q, k_hat, v, z, codebook = _inputs()
    valid = _valid("holes", 2, 13)
    got = vq_attention_ref(q, k_hat, v, z, codebook, causal=True, q_valid=valid, k_valid=valid, block_len=13)
    assert_same_function(got, softmax_attention_ref(q, k_hat, v, causal=True, q_valid=valid, k_valid=valid),
                         [q, k_hat, v])


def test_reference_shares_an_aggregated_code_gradient_equally_among_its_keys():
    """Non-causal: every key is aggregated; d/dk_j is (d/dk̄_s)/n_s for each key j of code s."""
    q, k_hat, v, z, codebook = _inputs(b=1, length=6)
    z = torch.tensor([[[0, 0, 1, 0, 2, 1], [3, 3, 3, 3, 3, 3]]])
    k_hat = codebook[torch.arange(H)[None, :, None], z].clone().requires_grad_()
    out = vq_attention_ref(q, k_hat, v, z, codebook, causal=False)
    (grad,) = torch.autograd.grad(out.sum(), k_hat)
    for head in range(H):
        for code in z[0, head].unique():
            rows = grad[0, head, z[0, head] == code]
            torch.testing.assert_close(rows, rows[:1].expand_as(rows), atol=1e-14, rtol=0)


# -- causal: blockwise == dense ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 32])
@pytest.mark.parametrize("block_len", [1, 3, 8, "L"])
@pytest.mark.parametrize("masks", ["none", "left", "holes"])
def test_blockwise_matches_dense(length, block_len, masks):
    b, block_len = 3, length if block_len == "L" else block_len
    q, k_hat, v, z, codebook = _inputs(b=b, length=length)
    valid = _valid(masks, b, length)
    got = vq_attention(q, k_hat, v, z, codebook, causal=True, block_len=block_len, valid=valid)
    want = vq_attention_ref(q, k_hat, v, z, codebook, causal=True, q_valid=valid, k_valid=valid,
                            block_len=block_len)
    assert_same_function(got, want, [q, k_hat, v])
    if valid is not None:
        assert (got[~valid[:, None].expand(-1, H, -1)] == 0).all()


@pytest.mark.parametrize("bias", ["shared", "per_head"])
@pytest.mark.parametrize("block_len", [1, 3, 8])
def test_blockwise_with_recent_bias_matches_dense(bias, block_len):
    q, k_hat, v, z, codebook = _inputs(b=3, length=19)
    valid = _valid("holes", 3, 19)
    recent_bias = _bias(bias, block_len)
    got = vq_attention(q, k_hat, v, z, codebook, causal=True, block_len=block_len, valid=valid,
                       recent_bias=recent_bias)
    want = vq_attention_ref(q, k_hat, v, z, codebook, causal=True, q_valid=valid, k_valid=valid,
                            block_len=block_len, recent_bias=recent_bias)
    assert_same_function(got, want, _leaves(q, k_hat, v, recent_bias))


def test_block_length_invariance_without_bias():
    q, k_hat, v, z, codebook = _inputs(length=17)
    outs = [vq_attention(q, k_hat, v, z, codebook, causal=True, block_len=w) for w in (1, 2, 5, 17, 40)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=0)


# -- streaming: chunks and single tokens == parallel ---------------------------------------------------------------


def _stream(q, k_hat, v, z, codebook, splits, *, block_len, valid, bias):
    """Chunks of the given sizes; a size 0 stands for one ``vq_attention_update`` call."""
    state, outs, t = None, [], 0
    for n in splits:
        if n == 0:
            if state is None:
                raise ValueError("start with a chunk")
            o, state = vq_attention_update(q[:, :, t], k_hat[:, :, t], v[:, :, t], z[:, :, t], codebook, state,
                                           block_len=block_len, valid=None if valid is None else valid[:, t],
                                           recent_bias=bias)
            outs.append(o[:, :, None])
            t += 1
            continue
        sl = slice(t, t + n)
        o, state = vq_attention_chunked(q[:, :, sl], k_hat[:, :, sl], v[:, :, sl], z[:, :, sl], codebook,
                                        block_len=block_len, valid=None if valid is None else valid[:, sl],
                                        recent_bias=bias, initial_state=state)
        outs.append(o)
        t += n
    return torch.cat(outs, dim=2), state


@pytest.mark.parametrize("splits", [[1] + [0] * 18, [4, 1, 6, 0, 0, 8], [19], [2, 17], [5, 0, 3, 0, 0, 0, 0, 0, 7]])
@pytest.mark.parametrize("block_len", [1, 3, 5])
@pytest.mark.parametrize("masks", ["none", "holes"])
def test_stream_and_update_match_parallel(splits, block_len, masks):
    q, k_hat, v, z, codebook = _inputs(b=3, length=19)
    valid = _valid(masks, 3, 19)
    bias = _bias("per_head", block_len)
    got, state = _stream(q, k_hat, v, z, codebook, splits, block_len=block_len, valid=valid, bias=bias)
    want, final = vq_attention_chunked(q, k_hat, v, z, codebook, block_len=block_len, valid=valid, recent_bias=bias)
    assert_same_function((got, state.counts, state.keys, state.values, state.recent_k, state.recent_v),
                         (want, final.counts, final.keys, final.values, final.recent_k, final.recent_v),
                         _leaves(q, k_hat, v, bias))
    assert torch.equal(state.recent_z, final.recent_z) and torch.equal(state.seen, final.seen)


def test_state_is_bounded_and_counts_exactly_the_old_valid_tokens():
    q, k_hat, v, z, codebook = _inputs(b=3, length=32)
    valid = _valid("holes", 3, 32)
    for w in (1, 4, 7):
        _, state = vq_attention_chunked(q, k_hat, v, z, codebook, block_len=w, valid=valid)
        seen = valid.sum(dim=1)
        assert torch.equal(state.seen, seen)
        assert state.recent_k.shape[2] <= 2 * w - 1
        assert torch.equal(state.counts.sum(dim=-1), (seen - held(seen, w))[:, None].expand(-1, H).to(F64))
    _, empty = vq_attention_chunked(q[:1, :, :0], k_hat[:1, :, :0], v[:1, :, :0], z[:1, :, :0], codebook,
                                    block_len=4)
    assert empty.recent_k.shape[2] == 0 and (empty.counts == 0).all()


# -- aggregated: non-causal self and cross --------------------------------------------------------------------------


@pytest.mark.parametrize("masks", ["none", "holes"])
def test_noncausal_self_matches_dense(masks):
    q, k_hat, v, z, codebook = _inputs(b=3, length=11)
    valid = _valid(masks, 3, 11)
    got = vq_attention(q, k_hat, v, z, codebook, causal=False, valid=valid)
    want = vq_attention_ref(q, k_hat, v, z, codebook, causal=False, q_valid=valid, k_valid=valid)
    assert_same_function(got, want, [q, k_hat, v])


def test_cross_matches_dense_with_an_empty_memory_row():
    q, *_ = _inputs(b=3, length=7, seed=1)
    _, k_hat, v, z, codebook = _inputs(b=3, length=10, seed=2)
    q_valid = _valid("holes", 3, 7)
    k_valid = torch.ones(3, 10, dtype=torch.bool)
    k_valid[0, 6:] = False
    k_valid[1] = False
    got = aggregate_attention(q, code_aggregate(k_hat, v, z, codebook, k_valid), q_valid=q_valid)
    want = vq_attention_ref(q, k_hat, v, z, codebook, causal=False, q_valid=q_valid, k_valid=k_valid)
    assert_same_function(got, want, [q, k_hat, v])
    assert (got[1] == 0).all()


# -- non-causal local form (LongVQ) ----------------------------------------------------------------------------------


def _local_bias(kind: str, block_len: int, seed: int = 3) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    shape = {"none": None, "shared": (4 * block_len - 1,), "per_head": (H, 4 * block_len - 1)}[kind]
    return None if shape is None else torch.randn(shape, generator=g, dtype=F64).requires_grad_()


@pytest.mark.parametrize("length", [1, 7, 32])
@pytest.mark.parametrize("block_len", [1, 3, 8, "L"])
@pytest.mark.parametrize("masks", ["none", "left", "holes"])
@pytest.mark.parametrize("bias", ["none", "shared", "per_head"])
def test_local_matches_dense(length, block_len, masks, bias):
    b, block_len = 3, length if block_len == "L" else block_len
    q, k_hat, v, z, codebook = _inputs(b=b, length=length)
    valid = _valid(masks, b, length)
    local_bias = _local_bias(bias, block_len)
    got = vq_attention_local(q, k_hat, v, z, codebook, block_len=block_len, valid=valid, local_bias=local_bias)
    want = vq_attention_local_ref(q, k_hat, v, z, codebook, block_len=block_len, valid=valid, local_bias=local_bias)
    assert_same_function(got, want, _leaves(q, k_hat, v, local_bias))
    if valid is not None:
        assert (got[~valid[:, None].expand(-1, H, -1)] == 0).all()


@pytest.mark.parametrize("block_len", [1, 3, 32])
@pytest.mark.parametrize("bias", ["none", "per_head"])
def test_local_with_a_code_per_key_is_softmax_attention_biased_on_the_local_pairs(block_len, bias):
    """S >= L and every key its own code (keys equal to codes): each aggregated code holds one key, so the form is
    ordinary softmax attention over k_hat, the bias added on the pairs whose valid-token blocks differ by <= 1 —
    outputs and gradients w.r.t. q, the keys, v and the bias table."""
    b, length = 3, 19
    g = torch.Generator().manual_seed(5)
    codebook = torch.randn(H, length + 2, DK, generator=g, dtype=F64)
    z = torch.stack([torch.randperm(length + 2, generator=g)[:length] for _ in range(b * H)]).view(b, H, length)
    k_hat = codebook[torch.arange(H)[None, :, None], z].clone().requires_grad_()
    q, _, v, _, _ = _inputs(b=b, length=length)
    valid = _valid("holes", b, length)
    local_bias = _local_bias(bias, block_len)
    got = vq_attention_local(q, k_hat, v, z, codebook, block_len=block_len, valid=valid, local_bias=local_bias)
    rank = valid.long().cumsum(dim=1) - 1
    visible = valid[:, :, None] & valid[:, None, :]
    matrix = None
    if local_bias is not None:
        local = (rank[:, :, None] // block_len - rank[:, None, :] // block_len).abs() <= 1
        offset = (rank[:, :, None] - rank[:, None, :] + 2 * block_len - 1).clamp(0, 4 * block_len - 2)
        matrix = torch.where(local[:, None], local_bias[:, offset].transpose(0, 1), 0.0)  # (B, H, L, L)
    want = biased_attention_ref(q, k_hat, v, visible[:, None], bias=matrix)
    assert_same_function(got, want, _leaves(q, k_hat, v, local_bias))


def test_local_half_precision_computes_in_float32():
    q, k_hat, v, z, codebook = (t.detach() for t in _inputs(length=20))
    bias = _local_bias("shared", 4).detach()
    want = vq_attention_local(q, k_hat, v, z, codebook, block_len=4, local_bias=bias)
    got = vq_attention_local(q.bfloat16(), k_hat.bfloat16(), v.bfloat16(), z, codebook.float(), block_len=4,
                             local_bias=bias.bfloat16())
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got.double() - want).abs().max() < 0.1


def test_local_bad_arguments_are_refused_naming_them():
    q, k_hat, v, z, codebook = _inputs(length=6)
    with pytest.raises(ValueError, match="block_len=0"):
        vq_attention_local(q, k_hat, v, z, codebook, block_len=0)
    with pytest.raises(ValueError, match=r"local_bias must have shape .*\(\.\.\., 11\), got \(6,\)"):
        vq_attention_local(q, k_hat, v, z, codebook, block_len=3, local_bias=torch.zeros(6, dtype=F64))
    with pytest.raises(ValueError, match="local_bias must have shape"):
        vq_attention_local_ref(q, k_hat, v, z, codebook, block_len=3, local_bias=torch.zeros(H, 2, 11, dtype=F64))


# -- precision and refusals ------------------------------------------------------------------------------------------


def test_half_precision_computes_in_float32():
    q, k_hat, v, z, codebook = (t.detach() for t in _inputs(length=20))
    want = vq_attention(q, k_hat, v, z, codebook, causal=True, block_len=4)
    got = vq_attention(q.bfloat16(), k_hat.bfloat16(), v.bfloat16(), z, codebook.float(), causal=True, block_len=4)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got.double() - want).abs().max() < 0.1


def test_bad_arguments_are_refused_naming_them():
    q, k_hat, v, z, codebook = _inputs(length=6)
    with pytest.raises(ValueError, match="block_len=0"):
        vq_attention(q, k_hat, v, z, codebook, causal=True, block_len=0)
    with pytest.raises(ValueError, match="recent_bias must have shape"):
        vq_attention(q, k_hat, v, z, codebook, causal=True, block_len=3, recent_bias=torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="causal only"):
        vq_attention(q, k_hat, v, z, codebook, causal=False, block_len=3)
    with pytest.raises(ValueError, match="needs block_len"):
        vq_attention_ref(q, k_hat, v, z, codebook, causal=True)
