"""RoPE against a complex-number rotation, and its relative-position property."""

from __future__ import annotations

import pytest
import torch

from longseq.ops.rotary import apply_rotary, apply_rotary_ref, rotary_cos_sin


def test_rotary_matches_complex_oracle_and_is_relative():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    pos = torch.randint(0, 1000, (2, 5))
    cos, sin = rotary_cos_sin(pos, 8, dtype=torch.float64)
    torch.testing.assert_close(apply_rotary(x, cos, sin), apply_rotary_ref(x, pos))
    # <R(m) q, R(n) k> depends on m - n only.
    q, k = torch.randn(2, 1, 1, 8, dtype=torch.float64)
    def dot(m: int, n: int) -> float:
        cm, sm = rotary_cos_sin(torch.tensor([[m]]), 8, dtype=torch.float64)
        cn, sn = rotary_cos_sin(torch.tensor([[n]]), 8, dtype=torch.float64)
        return float((apply_rotary(q[None], cm, sm) * apply_rotary(k[None], cn, sn)).sum())
    assert dot(7, 3) == pytest.approx(dot(104, 100), abs=1e-10)
