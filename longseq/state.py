"""State: what a mixer carries between chunks in streaming and step-by-step modes.

Lives below every other module (caches, mixers) so that both can build on it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Self

import torch
from torch import Tensor


@dataclasses.dataclass
class State:
    """Base of every mixer state: a dataclass whose tensors have batch in dim 0.

    Fields may be tensors, nested ``State``s (a KV cache), lists of states (a backbone's layers) or plain Python
    values (carried through unchanged).
    ``num_floats`` counts the floating-point numbers *per sequence* in the logical content of the state, so a
    preallocated buffer counts only its filled part (see ``logical_tensors``).
    """

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Self:
        def apply(value: object) -> object:
            if isinstance(value, Tensor):
                return fn(value)
            if isinstance(value, State):
                return value._map(fn)
            if isinstance(value, list):
                return [apply(v) for v in value]
            return value

        new = copy.copy(self)
        for f in dataclasses.fields(self):
            setattr(new, f.name, apply(getattr(self, f.name)))
        return new

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        """Move to ``device``; cast floating tensors (only) to ``dtype``."""

        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)

        return self._map(move)

    def select(self, index: Tensor | list[int]) -> Self:
        """Keep the batch rows ``index`` (in that order): beam search reorders, finished sequences drop out."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def detach(self) -> Self:
        """Cut the autograd history (truncated backpropagation through time)."""
        return self._map(Tensor.detach)

    def tensors(self) -> list[Tensor]:
        """Every tensor the traversal reaches (what ``select``, ``to`` and ``detach`` act on), buffers whole."""
        found: list[Tensor] = []

        def collect(t: Tensor) -> Tensor:
            found.append(t)
            return t

        self._map(collect)
        return found

    def logical_tensors(self) -> Iterator[Tensor]:
        """The tensors that hold the state's content. Preallocated caches override this to yield filled views."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, Tensor):
                    yield item
                elif isinstance(item, State):
                    yield from item.logical_tensors()

    def num_floats(self) -> int:
        """Floating-point numbers per sequence (complex counts as two)."""
        total = 0
        for t in self.logical_tensors():
            if t.is_floating_point() or t.is_complex():
                total += t[0].numel() * (2 if t.is_complex() else 1) if t.shape[0] else 0
        return total
