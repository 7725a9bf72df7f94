"""Finding where a training step went non-finite: the first module whose output holds a NaN or an infinity, and
the named tensors (weights, gradients) that do.

These run only after the trainer has seen a non-finite loss or gradient norm (``TrainConfig.on_nonfinite``), so
the normal training path pays nothing for them: no hook is installed until a failing micro-batch is run again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

# Module outputs are searched this deep (a tuple of states of lists of tensors): deeper containers are not outputs
# a non-finite value is worth looking for in.
_MAX_DEPTH = 4
_LISTED = 5  # names listed in a message before "+N more"


def floating_tensors(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """The floating-point tensors in ``value``: a tensor, or tensors inside tuples, lists, dicts and dataclasses
    (a model's output, a mixer's ``(y, state)``), up to a few levels deep."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield value
        return
    if depth >= _MAX_DEPTH:
        return
    if isinstance(value, tuple | list):
        items: Iterable[Any] = value
    elif isinstance(value, dict):
        items = value.values()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = (getattr(value, field.name) for field in dataclasses.fields(value))
    else:
        return
    for item in items:
        yield from floating_tensors(item, depth + 1)


def is_finite(value: Any) -> bool:
    """Whether every floating-point tensor in ``value`` (see ``floating_tensors``) is finite (a host sync)."""
    return all(bool(torch.isfinite(tensor).all()) for tensor in floating_tensors(value))


def first_nonfinite_module(model: nn.Module, run: Callable[[], object]) -> str | None:
    """Call ``run()`` (a forward pass of ``model``) with a forward hook on every module of ``model``; return the
    first module, in the order modules finish, whose output holds a non-finite value, as ``"'name' (Class)"``
    (``"the model (Class)"`` for ``model`` itself), or None when no output does.

    Modules finish inner first, so this is the innermost module where the values went bad (the first layer whose
    weights are poisoned, the first overflow); a non-finite value made by plain tensor code between modules is
    reported at the first module that outputs it. The hooks are removed before returning.
    """
    found: list[str] = []

    def hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def check(module: nn.Module, args: Any, output: Any) -> None:
            if not found and not is_finite(output):
                found.append(f"{name!r} ({type(module).__name__})" if name else f"the model ({type(module).__name__})")
        return check

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """The names of the tensors (None skipped) that hold a non-finite value, in order."""
    return [name for name, tensor in named if tensor is not None and not is_finite(tensor)]


def listed(names: list[str]) -> str:
    """``names`` for a one-line message: the first few, then how many more."""
    shown = ", ".join(names[:_LISTED])
    return shown + (f" (+{len(names) - _LISTED} more)" if len(names) > _LISTED else "")
