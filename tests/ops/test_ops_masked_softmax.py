"""Masked softmax and logsumexp: the plain functions on the valid entries, exact zeros (and zero gradients) on the
masked ones, finite zeros and gradients for a row with nothing valid."""

from __future__ import annotations

import math

import torch

from longseq.ops.masked_softmax import masked_logsumexp, masked_softmax


def _case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, generator=g, dtype=torch.float64)
    valid = torch.tensor([[True] * 6, [True, False, True, False, False, True], [False] * 6])
    return logits.masked_fill(~valid, 1e4).requires_grad_(), valid


def test_masked_softmax_is_the_softmax_of_the_valid_entries():
    logits, valid = _case()
    p = masked_softmax(logits, valid)
    for row in range(2):
        keep = valid[row]
        torch.testing.assert_close(p[row, keep], torch.softmax(logits[row, keep], dim=0), atol=1e-15, rtol=0)
    assert p[~valid].abs().max() == 0
    (grad,) = torch.autograd.grad((p * torch.randn_like(p)).sum(), logits)
    assert torch.isfinite(grad).all() and grad[~valid].abs().max() == 0
    assert torch.equal(masked_softmax(logits, None), torch.softmax(logits, dim=-1))


def test_masked_logsumexp_is_the_logsumexp_of_the_valid_entries():
    logits, valid = _case()
    lse = masked_logsumexp(logits, valid)
    for row in range(2):
        torch.testing.assert_close(lse[row], torch.logsumexp(logits[row, valid[row]], dim=0), atol=1e-15, rtol=0)
    assert lse[2] == -math.inf
    (grad,) = torch.autograd.grad(lse[:2].sum(), logits)
    assert torch.isfinite(grad).all() and grad[~valid].abs().max() == 0
