"""ParamCache: a value computed from parameters, reused outside autograd while the parameters are unchanged.

Decoding calls a layer once per token, and some layers derive a tensor from their parameters that costs far more
than the token itself: S4's discretised step matrices, Hyena's implicit filter, a regularized long-convolution
kernel. Outside autograd the value is computed once and reused while every parameter keeps its storage (its data
pointer) and its in-place version counter: an optimizer step and ``load_state_dict`` move the counter; a cast or a
move to another device allocates the new storage while the old one is still alive, so the pointer changes, and
dtype and device need no place in the key (reading them cost as much as the rest of it). Under autograd the value
is recomputed on every call, so that gradients reach the parameters.

``get_for(module, ...)`` keys the value on a whole module: every parameter of it and of its submodules, and the
submodules' types in order, so that replacing a submodule (even one without parameters, an activation) recomputes
it. The parameters are read from each module's own table: ``module.parameters()`` walks the tree through nested
generators, which on a CPU costs more than a decode step's arithmetic. Plain attributes (an activation's
``approximate``) are not part of any key: a value depending on one is computed with the value it had then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")


class ParamCache(Generic[T]):
    def __init__(self) -> None:
        self._key: list | None = None
        self._value: T | None = None

    def get(self, params: Iterable[Tensor], compute: Callable[[], T], *extra_key: object) -> T:
        """``compute()``, or the value it returned last time for the same parameters (and ``extra_key``)."""
        params = params if isinstance(params, (list, tuple)) else list(params)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return compute()
        key: list = []
        for p in params:
            key += (p.data_ptr(), p._version)
        return self._lookup(key, compute, extra_key)

    def get_for(self, module: nn.Module, compute: Callable[[], T], *extra_key: object) -> T:
        """``get`` over every parameter of ``module`` and its submodules, with the submodules' types (in order) in
        the key."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
            return compute()
        key: list = []
        _module_key(module, key)
        return self._lookup(key, compute, extra_key)

    def _lookup(self, key: list, compute: Callable[[], T], extra_key: tuple) -> T:
        key.append(extra_key)
        if self._value is None or self._key != key:
            self._key, self._value = key, compute()
        return self._value

    def __reduce__(self) -> tuple:
        # A copy (deepcopy, pickle, torch.save) starts empty: its parameters are new tensors, and the key names this
        # process's pointers (a cached value may also view a parameter's storage as another dtype, which torch.save
        # refuses).
        return ParamCache, ()


def _module_key(module: nn.Module, key: list) -> None:
    """Appends to ``key`` the type of ``module`` and (pointer, version) of each of its parameters, then the same for
    its submodules, depth first in registration order (a shared submodule or parameter appears once per place:
    harmless in a key). One flat list: comparing it stops at the first difference."""
    key.append(type(module))
    for p in module._parameters.values():
        if p is not None:  # register_parameter(name, None) leaves a None in the table
            key += (p.data_ptr(), p._version)
    for child in module._modules.values():
        if child is None:
            key.append(None)
        else:
            _module_key(child, key)
