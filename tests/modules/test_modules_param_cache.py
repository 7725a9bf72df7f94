"""ParamCache: reused outside autograd while the parameters are unchanged, recomputed otherwise."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

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


def test_a_deep_copy_and_a_pickled_copy_start_empty():
    p, cache = nn.Parameter(torch.ones(2)), ParamCache()
    with torch.no_grad():
        cache.get([p], lambda: p * 2)
        for clone in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
            assert clone.get([p], lambda: p * 3).tolist() == [3.0, 3.0]


class _Layer(nn.Module):
    """A parameter of its own and submodules: a Linear, a parameterless activation."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((3,), 2.0))
        self.body = nn.Sequential(nn.Linear(3, 3), nn.GELU())

    def forward(self, read: Callable[[], torch.Tensor]) -> torch.Tensor:
        return read()  # functional_call swaps its tensors in for the duration of forward only


def _derived(layer: _Layer) -> torch.Tensor:
    """The value a cache keeps: a function of every parameter and of the activation (its type)."""
    x = torch.linspace(-1.0, 1.0, 3, dtype=layer.scale.dtype)
    return layer.body(x * layer.scale).detach()


def _counting(layer: _Layer) -> tuple[list, Callable[[], torch.Tensor]]:
    """(calls, get): get() reads a ParamCache over ``layer`` (get_for); calls grows by one per computation."""
    cache, calls = ParamCache(), []

    def compute() -> torch.Tensor:
        calls.append(1)
        return _derived(layer)
    return calls, lambda: cache.get_for(layer, compute)


def test_get_for_reuses_the_value_while_nothing_changes():
    layer = _Layer()
    calls, get = _counting(layer)
    with torch.no_grad():
        first = get()
        assert get() is first and get() is first and len(calls) == 1


def test_get_for_sees_an_optimizer_step_and_a_load():
    torch.manual_seed(0)
    layer = _Layer()
    calls, get = _counting(layer)
    with torch.no_grad():
        get()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.body(torch.ones(3) * layer.scale).sum().backward()
    optimizer.step()  # in place: the version counters move
    with torch.no_grad():
        assert torch.equal(get(), _derived(layer)) and len(calls) == 2
        other = _Layer()
        layer.load_state_dict(other.state_dict())  # copies in place
        assert torch.equal(get(), _derived(other)) and len(calls) == 3


def test_get_for_sees_casts_replaced_parameters_and_submodules():
    layer = _Layer()
    calls, get = _counting(layer)
    with torch.no_grad():
        get()
        layer.double()  # new storage for every parameter
        assert get().dtype == torch.float64 and len(calls) == 2
        layer.scale = nn.Parameter(torch.full((3,), -1.0, dtype=torch.float64))  # a new parameter object
        assert torch.equal(get(), _derived(layer)) and len(calls) == 3
        layer.body[1] = nn.SiLU()  # a parameterless submodule: only the structure changes
        assert torch.equal(get(), _derived(layer)) and len(calls) == 4
        layer.load_state_dict(_Layer().double().state_dict(), assign=True)  # parameter objects replaced
        assert torch.equal(get(), _derived(layer)) and len(calls) == 5


def test_get_for_sees_parameters_swapped_by_functional_call():
    """``torch.func.functional_call`` writes its tensors into the modules' tables directly, without setattr."""
    torch.manual_seed(0)
    layer = _Layer()
    calls, get = _counting(layer)
    replacement = {name: torch.randn_like(p) for name, p in layer.named_parameters()}
    swapped = _Layer()
    swapped.load_state_dict(replacement)
    with torch.no_grad():
        before = get()
        inside = torch.func.functional_call(layer, replacement, (get,))
        assert torch.equal(inside, _derived(swapped)) and len(calls) == 2
        assert torch.equal(get(), before) and len(calls) == 3  # the layer's own parameters are back


def test_get_for_recomputes_under_autograd():
    layer = _Layer()
    cache = ParamCache()
    value = cache.get_for(layer, lambda: (layer.scale * 2).sum())
    value.backward()
    assert layer.scale.grad.tolist() == [2.0, 2.0, 2.0]
