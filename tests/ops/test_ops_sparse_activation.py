"""Sparse modular activation ops (SeqBoat): the router, compress / extract and the local attention on the
compressed sequence, each against its explicit oracle in float64, outputs and gradients; empty rows and an empty
batch; the blocked attention never builds an Lc x Lc score matrix."""

from __future__ import annotations

import itertools

import pytest
import torch

import longseq.ops.sparse_activation as ops
from longseq.ops.sparse_activation import (
    compress,
    compress_ref,
    extract,
    extract_ref,
    local_biased_attention,
    local_biased_attention_ref,
    route,
    route_ref,
)
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


def _act(b: int = 4, length: int = 11, seed: int = 0) -> torch.Tensor:
    """bool (B, L): random rows, row 2 with no activated token, row 3 all activated."""
    act = torch.rand(b, length, generator=torch.Generator().manual_seed(seed)) < 0.5
    act[2] = False
    act[3] = True
    return act


def test_route_matches_its_reference_with_ties_and_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 2, generator=g, dtype=F64)
    logits[0, 4] = 0.7  # a tie goes to "not activated"
    logits = logits.requires_grad_(True)
    temperature = torch.tensor(1.3, dtype=F64, requires_grad=True)
    valid = torch.rand(3, 9, generator=g) < 0.8
    act, gain = route(logits, temperature, valid)
    act_ref, gain_ref = route_ref(logits, temperature, valid)
    assert torch.equal(act, act_ref) and not act[0, 4]
    assert act.any() and (~act & valid).any()
    assert_same_function(gain, gain_ref, [logits, temperature], names=["logits", "temperature"])
    p = torch.softmax(logits / temperature, dim=-1)
    torch.testing.assert_close(gain, torch.where(act, p.max(dim=-1).values, 0.0))


def test_route_decides_in_float32_and_returns_the_input_dtype():
    logits = torch.randn(2, 5, 2).bfloat16()
    act, gain = route(logits, torch.tensor(1.0), None)
    assert gain.dtype == torch.bfloat16 and act.dtype == torch.bool
    assert (gain[act] >= 0.5).all() and (gain[~act] == 0).all()


@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)])
def test_compress_and_extract_match_their_references(trailing):
    act = _act()
    x = torch.randn(4, 11, *trailing, dtype=F64, requires_grad=True)
    (x_c, valid_c), (x_c_ref, valid_c_ref) = compress(x, act), compress_ref(x, act)
    assert x_c.shape[1] == act.sum(dim=1).max() == 11
    assert torch.equal(valid_c, valid_c_ref)
    assert_same_function(x_c, x_c_ref, [x], names=["x"])
    y_c = torch.randn(x_c.shape, dtype=F64, requires_grad=True)
    assert_same_function(extract(y_c, act), extract_ref(y_c, act), [y_c], names=["x_c"])


def test_compress_then_extract_is_the_identity_on_activated_tokens():
    act = _act(seed=1)
    act[3, ::2] = False  # no row holds the longest count alone
    x = torch.randn(4, 11, 5, dtype=F64)
    x_c, valid_c = compress(x, act)
    assert torch.equal(valid_c.sum(dim=1), act.sum(dim=1))
    assert x_c[~valid_c].abs().max() == 0  # a short row's empty slots are zeros
    torch.testing.assert_close(extract(x_c, act), torch.where(act[..., None], x, 0.0), atol=0, rtol=0)


def test_compress_of_a_batch_without_activated_token_is_empty():
    act = torch.zeros(3, 7, dtype=torch.bool)
    x = torch.randn(3, 7, 4, dtype=F64, requires_grad=True)
    x_c, valid_c = compress(x, act)
    assert x_c.shape == (3, 0, 4) and valid_c.shape == (3, 0)
    y = extract(x_c, act)
    assert y.shape == (3, 7, 4) and y.abs().max() == 0
    (grad,) = torch.autograd.grad(y.sum(), x, allow_unused=True, materialize_grads=True)
    assert grad.abs().max() == 0


# -- local attention on the compressed sequence ---------------------------------------------------------------------


def _bias_table(p: int = 40) -> torch.Tensor:
    return torch.randn(2 * p - 1, dtype=F64, generator=torch.Generator().manual_seed(5)).requires_grad_(True)


def _compressed(length: int = 13, b: int = 3, d: int = 4, dv: int = 6):
    """q, k, v of a compressed batch: row 1 shorter (empty slots at the end), row 2 empty; original positions
    increasing with gaps."""
    g = torch.Generator().manual_seed(length)
    q, k = (torch.randn(b, length, d, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
    v = torch.randn(b, length, dv, generator=g, dtype=F64, requires_grad=True)
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[1, length - 4:] = False
    valid[2] = False
    positions = torch.randint(1, 3, (b, length), generator=g).cumsum(dim=1).masked_fill(~valid, 0)
    return q, k, v, positions, valid


@pytest.mark.parametrize(("kernel", "left", "right", "block"), list(itertools.product(
    ["softmax", "relu2"], [0, 1, 3, 20], [0, 2], [None, 1, 4])))
def test_local_biased_attention_matches_reference(kernel, left, right, block):
    q, k, v, positions, valid = _compressed()
    table = _bias_table()

    def bias(offsets: torch.Tensor) -> torch.Tensor:
        return table[offsets + 39]

    kw = dict(left=left, right=right, kernel=kernel, bias=bias)
    want = local_biased_attention_ref(q, k, v, positions, valid, **kw)
    got = local_biased_attention(q, k, v, positions, valid, block=block, **kw)
    assert got[~valid].abs().max() == 0
    assert_same_function(got, want, [q, k, v, table], names=["q", "k", "v", "bias table"])


def test_local_biased_attention_without_bias_and_empty():
    q, k, v, positions, valid = _compressed(length=6)
    want = local_biased_attention_ref(q, k, v, positions, valid, left=2, right=0)
    assert_same_function(local_biased_attention(q, k, v, positions, valid, left=2, right=0), want, [q, k, v])
    empty = local_biased_attention(q[:, :0], k[:, :0], v[:, :0], positions[:, :0], valid[:, :0], left=2, right=0)
    assert empty.shape == (3, 0, 6)


def test_local_biased_attention_scores_only_blocks_of_the_band(monkeypatch):
    """O(Lc·w): each block of c query slots is scored against c + left + right key slots, never all Lc."""
    seen = []

    def spy(q, k, v, visible, **kw):
        seen.append((q.shape[-2], k.shape[-2]))
        return ops.biased_attention_ref(q, k, v, visible, **kw)

    monkeypatch.setattr(ops, "biased_attention", spy)
    q, k, v, positions, valid = _compressed(length=32)
    local_biased_attention(q, k, v, positions, valid, left=3, right=0)
    assert seen == [(3, 6)]


def test_local_biased_attention_refuses_a_bad_band():
    q, k, v, positions, valid = _compressed(length=4)
    with pytest.raises(ValueError, match="left=-1"):
        local_biased_attention(q, k, v, positions, valid, left=-1, right=0)
    with pytest.raises(ValueError, match="block=0"):
        local_biased_attention(q, k, v, positions, valid, left=1, right=0, block=0)
