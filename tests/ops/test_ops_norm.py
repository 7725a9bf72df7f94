"""Gated RMSNorm: the fast form vs the per-group float64 oracle (outputs and gradients w.r.t. x, z and weight), the
oracle vs torch's own RMSNorm, half precision, refusals."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from longseq.ops.norm import gated_rms_norm, gated_rms_norm_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
D = 16


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, z = (torch.randn(2, 5, D, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
    weight = (1 + 0.5 * torch.randn(D, generator=g, dtype=F64)).requires_grad_()
    return x, z, weight


@pytest.mark.parametrize(("gated", "norm_before_gate", "group_size"), list(itertools.product(
    [False, True], [False, True], [None, 4, 16])))
def test_fast_matches_reference(gated, norm_before_gate, group_size):
    x, z, weight = _inputs()
    kwargs = dict(eps=1e-5, norm_before_gate=norm_before_gate, group_size=group_size)
    got = gated_rms_norm(x, z if gated else None, weight, **kwargs)
    want = gated_rms_norm_ref(x, z if gated else None, weight, **kwargs)
    assert_same_function(got, want, [x, weight] + ([z] if gated else []))


@pytest.mark.parametrize("group_size", [None, 4])
def test_reference_is_rms_norm_of_the_gated_input(group_size):
    """torch's F.rms_norm over each group, the gate by F.silu: an independent oracle for the oracle."""
    x, z, weight = (t.detach() for t in _inputs(1))
    g = group_size or D

    def rms(t):
        return F.rms_norm(t.unflatten(-1, (-1, g)), (g,), eps=1e-5).flatten(-2) * weight

    torch.testing.assert_close(gated_rms_norm_ref(x, z, weight, group_size=group_size), rms(x * F.silu(z)))
    torch.testing.assert_close(gated_rms_norm_ref(x, z, weight, norm_before_gate=True, group_size=group_size),
                               rms(x) * F.silu(z))
    torch.testing.assert_close(gated_rms_norm_ref(x, None, weight, group_size=group_size), rms(x))


def test_groups_are_normalised_separately():
    """Scaling one group of the input leaves the other groups' outputs unchanged."""
    x, z, weight = (t.detach() for t in _inputs(2))
    scaled = x.clone()
    scaled[..., :4] *= 100.0
    a, b = gated_rms_norm(x, z, weight, group_size=4), gated_rms_norm(scaled, z, weight, group_size=4)
    torch.testing.assert_close(a[..., 4:], b[..., 4:], atol=1e-12, rtol=0)
    assert not torch.allclose(gated_rms_norm(x, z, weight)[..., 4:], gated_rms_norm(scaled, z, weight)[..., 4:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computes_in_float32(dtype):
    x, z, weight = (t.detach() for t in _inputs(3))
    got = gated_rms_norm(x.to(dtype), z.to(dtype), weight.to(dtype), group_size=4)
    assert got.dtype == dtype
    want = gated_rms_norm_ref(x.to(dtype).double(), z.to(dtype).double(), weight.to(dtype).double(), group_size=4)
    torch.testing.assert_close(got, want.to(dtype))


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"group_size": 5}, ["group_size=5", "positive divisor", "16"]),
    ({"group_size": 0}, ["group_size=0"]),
    ({"weight": torch.ones(8)}, ["weight must have shape (D,) = (16,)", "(8,)"]),
    ({"z": torch.ones(2, 5, 8)}, ["z must have x's shape (2, 5, 16)", "(2, 5, 8)"]),
])
@pytest.mark.parametrize("fn", [gated_rms_norm, gated_rms_norm_ref])
def test_refusals_name_the_argument(fn, kwargs, words):
    args = {"x": torch.randn(2, 5, D), "z": torch.randn(2, 5, D), "weight": torch.ones(D)} | kwargs
    with pytest.raises(ValueError) as info:
        fn(**args)
    for word in words:
        assert word in str(info.value)
