"""Continuing a causal convolution from an input history: the one-token dot product and the FFT chunk form vs the
Toeplitz oracle (outputs and gradients, float64), and the newest-first history after masked chunks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longseq.ops.fft_conv import fft_conv
from longseq.ops.history_conv import conv_continue, conv_continue_ref, push_history
from longseq.ops.pack import pack
from longseq.testing.oracle import assert_same_function

F64 = torch.float64


@settings(max_examples=30, deadline=None)
@given(past=st.integers(0, 30), new=st.integers(1, 12), k_len=st.integers(1, 40), skip=st.booleans(),
       seed=st.integers(0, 2**16))
def test_conv_continue_matches_toeplitz(past, new, k_len, skip, seed):
    g = torch.Generator().manual_seed(seed)
    u, hist = (torch.randn(2, 3, n, generator=g, dtype=F64, requires_grad=True) for n in (new, past))
    k = torch.randn(3, k_len, generator=g, dtype=F64, requires_grad=True)
    D = torch.randn(3, generator=g, dtype=F64, requires_grad=True) if skip else None
    inputs = [u, hist, k] + ([D] if skip else [])
    assert_same_function(conv_continue(u, hist, k, D=D), conv_continue_ref(u, hist, k, D=D), inputs)


@pytest.mark.parametrize("chunks", [[1] * 20, [3, 1, 9, 7], [20]])
def test_streaming_chunks_with_a_bounded_history_equals_one_convolution(chunks):
    g = torch.Generator().manual_seed(0)
    u, k, D = torch.randn(2, 4, 20, generator=g, dtype=F64), torch.randn(4, 6, generator=g, dtype=F64), None
    history, ys, t = u.new_zeros(2, 4, 0), [], 0
    for n in chunks:
        ys.append(conv_continue(u[..., t:t + n], history, k, D=D))
        history = push_history(history, u[..., t:t + n], keep=k.shape[1] - 1)
        assert history.shape[-1] == min(t + n, 5)
        t += n
    torch.testing.assert_close(torch.cat(ys, dim=-1), fft_conv(u, k))


def test_push_history_keeps_each_rows_last_valid_inputs_newest_first():
    u = torch.arange(1.0, 7.0).expand(3, 1, 6)  # inputs 1..6 in every row
    mask = torch.tensor([[True] * 6, [False, True, False, True, True, False], [False] * 6])
    history = torch.tensor([[[20.0, 10.0]], [[30.0, 0.0]], [[0.0, 0.0]]])  # row 1 has seen one input, row 2 none
    new = push_history(history, pack(u, mask, dim=2), keep=4, n_valid=mask.sum(dim=1))
    assert new.tolist() == [[[6.0, 5.0, 4.0, 3.0]], [[5.0, 4.0, 2.0, 30.0]], [[0.0, 0.0, 0.0, 0.0]]]
    assert push_history(history, u[..., :1], keep=0).shape[-1] == 0
    assert push_history(history, u[:, :, :2], keep=3).tolist() == [[[2.0, 1.0, 20.0]], [[2.0, 1.0, 30.0]],
                                                                   [[2.0, 1.0, 0.0]]]
    assert push_history(history, u[:, :, :3], keep=2).tolist() == [[[3.0, 2.0]]] * 3


def test_push_history_does_not_alias_its_arguments():
    u, history = torch.randn(1, 2, 3), torch.randn(1, 2, 2)
    new = push_history(history, u, keep=2)
    u.zero_()
    assert new.abs().sum() > 0


def test_refusals_name_the_argument():
    with pytest.raises(ValueError, match="k must have shape"):
        conv_continue(torch.zeros(1, 2, 3), torch.zeros(1, 2, 0), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="history"):
        conv_continue(torch.zeros(1, 2, 3), torch.zeros(1, 3, 1), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="keep=-1"):
        push_history(torch.zeros(1, 2, 0), torch.zeros(1, 2, 3), keep=-1)
