"""Segment means: the fast averaging matrix against the row-by-row oracle (outputs and gradients) with padding at
either end, holes, short and empty rows; CAB's rule for lengths not divisible by the landmark count."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.landmarks import segment_ids, segment_means, segment_means_ref
from longseq.testing.oracle import assert_same_function


def _valid(length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(5, length, dtype=torch.bool)
    valid[0, :3] = False  # left padding
    valid[1, -4:] = False  # right padding
    valid[2] = torch.rand(length, generator=g) < 0.6  # holes
    valid[3] = False
    valid[3, 2:5] = True  # fewer valid tokens than landmarks
    valid[4] = False  # nothing valid
    return valid


@pytest.mark.parametrize("length", [13, 16, 21])
@pytest.mark.parametrize("masked", [False, True])
def test_segment_means_match_reference(length, masked):
    valid = _valid(length) if masked else None
    x = torch.randn(5, 2, length, 3, dtype=torch.float64, requires_grad=True)
    got, got_valid = segment_means(x, 4, valid)
    want, want_valid = segment_means_ref(x, 4, valid)
    assert torch.equal(got_valid, want_valid)
    assert_same_function(got, want, [x])


def test_sizes_follow_cabs_rule():
    """10 tokens in 4 segments: 2, 2, 3, 3 (the short ones first); 3 tokens in 4: one empty, then 1, 1, 1."""
    ten = segment_ids(torch.ones(1, 10, dtype=torch.bool), 4)[0]
    assert ten.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]
    three = segment_ids(torch.tensor([[False, True, True, False, True]]), 4)[0]
    assert three.tolist() == [-1, 1, 2, -1, 3]
    _, seg_valid = segment_means(torch.randn(1, 5, 2), 4, torch.tensor([[False, True, True, False, True]]))
    assert seg_valid.tolist() == [[False, True, True, True]]


def test_padding_is_inert():
    """A padded row has the landmarks of its valid tokens alone; garbage (NaN) in the padding reaches nothing."""
    valid = _valid(13)
    x = torch.randn(5, 13, 3, dtype=torch.float64).masked_fill(~valid[..., None], float("nan")).requires_grad_()
    means, _ = segment_means(x, 4, valid)
    assert torch.isfinite(means).all()
    for row in range(4):
        alone, _ = segment_means(x[row:row + 1, valid[row]].detach(), 4)
        torch.testing.assert_close(means[row], alone[0], atol=1e-15, rtol=0)
    (grad,) = torch.autograd.grad(means.sum(), x)
    assert torch.isfinite(grad).all() and grad[~valid].abs().max() == 0


def test_refusals():
    with pytest.raises(ValueError, match="n_segments=0"):
        segment_means(torch.randn(1, 5, 2), 0)
    with pytest.raises(ValueError, match="valid must be bool of shape"):
        segment_means(torch.randn(1, 5, 2), 2, torch.ones(1, 4, dtype=torch.bool))
