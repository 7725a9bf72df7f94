"""MEGA's small modules: the relative position bias (offsets to table entries, refusals beyond P) and OffsetScale
(shapes, values, initialisation)."""

from __future__ import annotations

import pytest
import torch

from longseq.modules.offset_scale import OffsetScale
from longseq.modules.relative_bias import RelativePositionBias


def test_relative_bias_offsets_map_to_their_entries():
    bias = RelativePositionBias(4)
    assert bias.weight.shape == (7,)
    with torch.no_grad():
        bias.weight.copy_(torch.arange(7.0))  # entry e holds offset e - 3
    offsets = torch.tensor([[-3, -1, 0], [1, 2, 3]])
    torch.testing.assert_close(bias(offsets), (offsets + 3).float())
    i, j = torch.arange(4)[:, None], torch.arange(4)[None, :]
    matrix = bias(j - i)  # MEGA's bias[i, j] = b[j - i + P - 1]
    assert matrix[0, 3] == 6 and matrix[3, 0] == 0 and torch.all(matrix.diagonal() == 3)


def test_relative_bias_gradient_reaches_only_the_entries_used():
    bias = RelativePositionBias(3)
    bias(torch.tensor([0, 0, 2])).sum().backward()
    torch.testing.assert_close(bias.weight.grad, torch.tensor([0.0, 0.0, 2.0, 0.0, 1.0]))


def test_relative_bias_refusals():
    bias = RelativePositionBias(4)
    with pytest.raises(ValueError, match=r"offset 4 is beyond max_positions=4; allowed offsets: -3..3"):
        bias(torch.tensor([0, -4]))
    with pytest.raises(ValueError, match="offsets must be an integer tensor"):
        bias(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="max_positions=0 must be a positive integer"):
        RelativePositionBias(0)
    assert bias(torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_offset_scale_shapes_and_values():
    module = OffsetScale(5, 3)
    assert module.gamma.shape == module.beta.shape == (3, 5)
    assert torch.all(module.beta == 0) and 0 < module.gamma.std() < 0.1  # MEGA's init: N(0, 0.02²) and 0
    with torch.no_grad():
        module.gamma.normal_()
        module.beta.normal_()
    z = torch.randn(2, 7, 5)
    outs = module(z)
    assert len(outs) == 3
    for h, out in enumerate(outs):
        assert out.shape == (2, 7, 5)
        torch.testing.assert_close(out, z * module.gamma[h] + module.beta[h])


def test_offset_scale_refusals():
    with pytest.raises(ValueError, match="heads=0 must be a positive integer"):
        OffsetScale(4, 0)
    with pytest.raises(ValueError, match="z must have 4 channels"):
        OffsetScale(4, 2)(torch.zeros(3, 5))
