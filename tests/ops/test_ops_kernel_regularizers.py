"""The long-convolution kernel regularizers against their definitions."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.kernel_regularizers import smooth, squash


def test_squash_is_a_soft_threshold():
    k = torch.tensor([[-0.5, -0.1, 0.0, 0.05, 0.3]])
    torch.testing.assert_close(squash(k, 0.1), torch.tensor([[-0.4, 0.0, 0.0, 0.0, 0.2]]))


def test_smooth_is_a_centred_zero_padded_average():
    k = torch.randn(2, 9, dtype=torch.float64)
    padded = torch.nn.functional.pad(k, (1, 1))
    want = torch.stack([padded[:, j:j + 3].mean(-1) for j in range(9)], dim=-1)
    torch.testing.assert_close(smooth(k, 3), want)
    torch.testing.assert_close(smooth(k, 1), k)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="window=4"):
        smooth(torch.zeros(1, 5), 4)
    with pytest.raises(ValueError, match="lam=-1"):
        squash(torch.zeros(1, 5), -1.0)
