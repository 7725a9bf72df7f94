"""Auxiliary losses: how a module's training objective beyond the task loss reaches the trainer.

A module that has such a loss (the VQ commitment loss, a load-balancing loss) calls ``add_aux_loss(name, value)``
during its forward. The value goes to the innermost active ``collect_aux_losses()`` scope; with none active it is
dropped. Every model (``CausalLM``, ``SequenceClassifier``, ``EncoderDecoder``) runs its forward inside a scope and
returns the sum of what was collected as ``LMOutput.aux_loss`` (None when nothing was); the trainer back-propagates
``loss + aux_loss`` and logs ``aux_loss`` beside the task loss, which stays what is reported and evaluated.

Choices:
- **A scope, not state on the modules**: nothing is stored on a module (docs/design.md §3: no stream lives on a
  module), nothing accumulates when nobody collects (a bare mixer in ``train()``, the contract suite), and no model
  has to know which of its submodules have losses.
- **Only in training**: a module adds its loss only when ``self.training`` and ``collecting()``. Training side
  effects that belong to the same objective — the VQ codebook's EMA update, the closed-form step of its codebook loss
  (``modules/vector_quantizer.py``) — follow the same rule, so a bare module in ``train()`` outside a scope computes
  exactly what it computes in ``eval()``, and a training step is a model forward inside its scope.
- Values with the same name add up (a loss per layer is one loss for the trainer); the scope is per thread/task
  (a ``ContextVar``), and scopes nest: an inner model's scope keeps its losses, which it returns on its output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from torch import Tensor

_ACTIVE: ContextVar[AuxLosses | None] = ContextVar("longseq_aux_losses", default=None)


class AuxLosses:
    """The auxiliary losses collected in one scope: ``values`` maps a name to the sum of what was added under it."""

    def __init__(self) -> None:
        self.values: dict[str, Tensor] = {}

    def add(self, name: str, value: Tensor) -> None:
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"aux loss {name!r} must be a scalar tensor, got {type(value).__name__} "
                             f"{tuple(getattr(value, 'shape', ()))}")
        self.values[name] = self.values[name] + value if name in self.values else value.reshape(())

    def total(self) -> Tensor | None:
        """The sum of every collected loss (a scalar tensor), or None when none was added."""
        return sum(self.values.values()) if self.values else None  # type: ignore[return-value]


@contextlib.contextmanager
def collect_aux_losses() -> Iterator[AuxLosses]:
    """``with collect_aux_losses() as aux: out = model_body(x)`` — then ``aux.total()``."""
    collector = AuxLosses()
    token = _ACTIVE.set(collector)
    try:
        yield collector
    finally:
        _ACTIVE.reset(token)


def collecting() -> bool:
    """Whether a scope would receive an aux loss added now (modules skip computing one otherwise)."""
    return _ACTIVE.get() is not None


def add_aux_loss(name: str, value: Tensor) -> None:
    """Add ``value`` (a scalar tensor with its autograd graph) under ``name`` to the innermost scope, if any."""
    collector = _ACTIVE.get()
    if collector is not None:
        collector.add(name, value)
