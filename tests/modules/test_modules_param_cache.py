"""ParamCache: reused outside autograd while the parameters are unchanged, recomputed otherwise."""

from __future__ import annotations

import copy

import torch
from torch import nn

from longseq.modules.param_cache import ParamCache


def test_reuses_the_value_until_a_parameter_changes():
    p, cache, calls = nn.Parameter(torch.ones(3)), ParamCache(), []

    def compute():
        calls.append(1)
        return p.detach() * 2

    with torch.no_grad():
        first = cache.get([p], compute)
        assert cache.get([p], compute) is first and len(calls) == 1
        p.add_(1.0)  # an optimizer step: in place, the version counter moves
        assert cache.get([p], compute).tolist() == [4.0, 4.0, 4.0] and len(calls) == 2
        cache.get([p], compute, "other key")
        assert len(calls) == 3


def test_recomputes_under_autograd_so_gradients_reach_the_parameters():
    p, cache = nn.Parameter(torch.ones(2)), ParamCache()
    cache.get([p], lambda: p * 2)
    cache.get([p], lambda: p * 2).sum().backward()
    assert p.grad.tolist() == [2.0, 2.0]


def test_a_deep_copy_starts_empty():
    p, cache = nn.Parameter(torch.ones(2)), ParamCache()
    with torch.no_grad():
        cache.get([p], lambda: p * 2)
        clone = copy.deepcopy(cache)
        assert clone.get([p], lambda: p * 3).tolist() == [3.0, 3.0]
