"""GatedRMSNorm: the module vs the float64 oracle with its own weight (outputs and gradients), in both gate
orders, grouped and not, gated and plain; dtypes; refusals."""

from __future__ import annotations

import itertools

import pytest
import torch

from longseq.modules import GatedRMSNorm
from longseq.ops.norm import gated_rms_norm_ref
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
D = 16


@pytest.mark.parametrize(("norm_before_gate", "group_size", "gated"), list(itertools.product(
    [False, True], [None, 8], [False, True])))
def test_module_matches_reference(norm_before_gate, group_size, gated):
    norm = GatedRMSNorm(D, eps=1e-6, norm_before_gate=norm_before_gate, group_size=group_size).to(F64)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.5)  # the ones it starts with would hide a missing weight
    g = torch.Generator().manual_seed(0)
    x, z = (torch.randn(2, 32, D, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
    got = norm(x, z if gated else None)
    want = gated_rms_norm_ref(x, z if gated else None, norm.weight, eps=1e-6, norm_before_gate=norm_before_gate,
                              group_size=group_size)
    assert_same_function(got, want, [x, norm.weight] + ([z] if gated else []))


def test_keeps_the_input_dtype():
    norm = GatedRMSNorm(D, group_size=4).to(torch.bfloat16)
    x = torch.randn(2, 3, D, dtype=torch.bfloat16)
    assert norm(x, x).dtype == torch.bfloat16
    assert GatedRMSNorm(D)(x.float()).dtype == torch.float32


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"group_size": 6}, ["group_size=6", "positive divisor of the channel count 16"]),
    ({"eps": 0.0}, ["eps=0.0 must be > 0"]),
    ({"d": 0}, ["d=0 must be a positive integer"]),
])
def test_refusals(kwargs, words):
    with pytest.raises(ValueError) as info:
        GatedRMSNorm(**({"d": D} | kwargs))
    for word in words:
        assert word in str(info.value)
