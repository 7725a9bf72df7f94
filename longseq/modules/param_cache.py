"""ParamCache: a value computed from parameters, reused outside autograd while the parameters are unchanged.

Decoding calls a layer once per token, and some layers derive a tensor from their parameters that costs far more
than the token itself: S4's discretised step matrices, Hyena's implicit filter, a regularized long-convolution
kernel. Outside autograd the value is computed once and reused while every parameter keeps its storage and its
in-place version counter (an optimizer step, ``load_state_dict`` or a cast changes one of them). Under autograd
it is recomputed on every call, so that gradients reach the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class ParamCache(Generic[T]):
    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: T | None = None

    def get(self, params: Iterable[Tensor], compute: Callable[[], T], *extra_key: object) -> T:
        """``compute()``, or the value it returned last time for the same parameters (and ``extra_key``)."""
        params = list(params)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return compute()
        key = (tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params), extra_key)
        if self._value is None or self._key != key:
            self._key, self._value = key, compute()
        return self._value

    def __deepcopy__(self, memo: dict) -> ParamCache[T]:
        return ParamCache()  # a copy's parameters are new tensors: nothing cached applies to them
