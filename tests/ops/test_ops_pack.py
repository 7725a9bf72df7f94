"""Packing valid tokens to the front and back, against a row-by-row oracle."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.pack import pack, pack_ref, unpack


def _mask() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 11, generator=g) < 0.6
    mask[2] = False  # a row with no valid token
    mask[3] = True
    return mask


@pytest.mark.parametrize("dim", [1, 2])
def test_pack_matches_the_row_by_row_oracle_and_unpack_inverts_it(dim):
    mask = _mask()
    x = torch.randn(4, 11, 3, dtype=torch.float64) if dim == 1 else torch.randn(4, 3, 11, dtype=torch.float64)
    packed = pack(x, mask, dim=dim)
    torch.testing.assert_close(packed, pack_ref(x, mask, dim=dim), atol=0, rtol=0)
    restored = unpack(packed, mask, dim=dim)
    keep = mask[:, :, None] if dim == 1 else mask[:, None, :]
    torch.testing.assert_close(restored, torch.where(keep, x, 0.0), atol=0, rtol=0)


def test_padding_never_reaches_a_gradient_even_as_nan():
    mask = _mask()
    x = torch.randn(4, 11, 3, dtype=torch.float64).masked_fill(~mask[..., None], float("nan")).requires_grad_(True)
    y = unpack(pack(x, mask).cumsum(dim=1), mask)  # a causal op on the packed rows
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    assert grad[~mask].abs().max() == 0
