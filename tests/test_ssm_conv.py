"""The decode plan of the S4-style layers (``longseq/mixers/_ssm_conv.py``: S4, S4D, EMA): made once outside autograd,
reused while nothing changes, and remade when the parameters or the layer's submodules change between two steps. The
oracle is a deep copy of the layer, which starts without a plan; each test also checks that the stale plan would have
given another result, so that a plan never remade would fail it."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from longseq.mixers import build
from longseq.state import State

MIXERS = [("s4d", {"d_state": 8}), ("s4d", {"d_state": 4, "init": "real"}), ("ema", {"ndim": 4}),
          ("s4", {"d_state": 8})]


def _layer(name: str, hypers: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build(name, 16, **hypers).eval()


def _next(mixer: nn.Module, x_t: torch.Tensor, state: State) -> torch.Tensor:
    with torch.no_grad():
        return mixer.step(x_t, state)[0]


def _primed(mixer: nn.Module) -> tuple[torch.Tensor, State]:
    """(x: (2, 4, 16), the state after x's first two tokens): the plan exists."""
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, state = mixer.forward_stream(x[:, :1], mixer.init_state(2))
        _, state = mixer.step(x[:, 1], state)
    return x, state


@pytest.mark.parametrize(("name", "hypers"), MIXERS)
def test_the_plan_is_made_once_while_nothing_changes(name, hypers, monkeypatch):
    mixer = _layer(name, hypers)
    ssm, made = mixer.kernels[0], []
    recurrence = ssm.recurrence
    monkeypatch.setattr(ssm, "recurrence", lambda: made.append(1) or recurrence())
    x, state = _primed(mixer)
    with torch.no_grad():
        for t in range(2, 4):
            _, state = mixer.step(x[:, t], state)
        mixer.forward_stream(x, state)
    assert len(made) == 1


@pytest.mark.parametrize(("name", "hypers"), MIXERS)
def test_an_optimizer_step_between_two_steps_is_seen(name, hypers):
    mixer = _layer(name, hypers)
    x, state = _primed(mixer)
    stale = _next(mixer, x[:, 2], state)
    optimizer = torch.optim.SGD(mixer.parameters(), lr=0.05)
    mixer(x).square().mean().backward()
    optimizer.step()
    got = _next(mixer, x[:, 2], state)
    assert torch.equal(got, _next(copy.deepcopy(mixer), x[:, 2], state)) and not torch.equal(got, stale)


@pytest.mark.parametrize(("name", "hypers"), MIXERS)
def test_a_load_and_a_cast_are_seen(name, hypers):
    mixer, other = _layer(name, hypers), _layer(name, hypers, seed=1)
    x, state = _primed(mixer)
    stale = _next(mixer, x[:, 2], state)
    mixer.load_state_dict(other.state_dict())
    got = _next(mixer, x[:, 2], state)
    assert torch.equal(got, _next(other, x[:, 2], state)) and not torch.equal(got, stale)
    mixer.double()
    state64 = state.to(dtype=torch.float64)
    got = _next(mixer, x[:, 2].double(), state64)
    assert got.dtype == torch.float64 and torch.equal(got, _next(copy.deepcopy(mixer), x[:, 2].double(), state64))


def test_a_replaced_output_layer_is_seen():
    """An output layer the fused step does not know is applied after it: the step still equals the parallel mode."""
    mixer = _layer("s4d", {"d_state": 8}).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _primed(mixer)  # a plan for the GLU output
    mixer.output = nn.Tanh()
    with torch.no_grad():
        state, ys = mixer.init_state(2), []
        for t in range(x.shape[1]):
            y, state = mixer.step(x[:, t], state)
            ys.append(y)
        torch.testing.assert_close(torch.stack(ys, dim=1), mixer(x), atol=1e-10, rtol=1e-9)


def test_a_decoding_layer_can_be_saved_whole():
    """``torch.save`` of the module (not its state dict) after a step: the plan is not saved (it views parameters'
    storage as complex, which torch.save refuses), and the loaded layer decodes the same."""
    mixer = _layer("s4d", {"d_state": 8})
    x, state = _primed(mixer)
    buffer = io.BytesIO()
    torch.save(mixer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(_next(loaded, x[:, 2], state), _next(mixer, x[:, 2], state))
