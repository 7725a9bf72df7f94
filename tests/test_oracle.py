"""The fast-vs-reference comparison every op test uses must catch wrong values and wrong gradients."""

from __future__ import annotations

import pytest
import torch

from longseq.testing.oracle import assert_same_function


def _x() -> torch.Tensor:
    return torch.randn(3, 4, dtype=torch.float64, requires_grad=True)


def test_equal_functions_pass_with_tuples_of_outputs():
    x, s = _x(), _x()
    assert_same_function((x.cumsum(0), s * 2), (torch.stack([x[: i + 1].sum(0) for i in range(3)]), s + s), [x, s])


def test_a_wrong_value_fails():
    x = _x()
    with pytest.raises(AssertionError, match="output 0"):
        assert_same_function(x * (1 + 1e-6), x * 1.0, [x])


def test_a_wrong_gradient_with_right_values_fails_naming_the_input():
    x, w = _x(), _x()
    got = x.detach() * w  # the right value, no gradient w.r.t. x
    with pytest.raises(AssertionError, match="gradient of x"):
        assert_same_function(got, x * w, [x, w], names=["x", "w"])


def test_a_wrong_gradient_of_a_second_output_fails():
    x = _x()
    with pytest.raises(AssertionError, match="gradient of input 0"):
        assert_same_function((x * 2, x.detach() ** 2), (x * 2, x**2), [x])
