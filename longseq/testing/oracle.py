"""Comparing a fast form with its slow reference: the same values and the same gradients (docs/design.md §6).

Every op and module test in longseq uses this one comparison, so "agrees with its oracle" means the same thing
everywhere: outputs (final states included) equal within float64 rounding, and the gradient of one random
projection of *all* outputs equal w.r.t. every input (initial states and parameters included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ATOL, RTOL = 1e-12, 1e-10  # float64 rounding across different summation orders


def _as_tuple(outputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)


def assert_same_function(got: Tensor | Sequence[Tensor], want: Tensor | Sequence[Tensor], inputs: Sequence[Tensor],
                         *, names: Sequence[str] | None = None, atol: float = ATOL, rtol: float = RTOL,
                         seed: int = 0) -> None:
    """``got`` and ``want``: the outputs (a tensor, or a tuple such as ``(y, final_state)``) of the fast form and
    of the reference, both computed from ``inputs`` (leaf tensors with ``requires_grad``). An input that cannot act
    must get a zero gradient from both (not "unused" from one)."""
    got, want = _as_tuple(got), _as_tuple(want)
    assert len(got) == len(want), f"{len(got)} outputs vs {len(want)} from the reference"
    labels = list(names) if names is not None else [f"input {i}" for i in range(len(inputs))]
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, i=i: f"output {i}: {m}")
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(b.shape, generator=g, dtype=torch.float64).to(b.dtype) for b in want]
    grads_got, grads_want = _gradients(got, cotangents, inputs), _gradients(want, cotangents, inputs)
    for label, a, b in zip(labels, grads_got, grads_want, strict=True):
        assert torch.isfinite(a).all(), f"gradient of {label}: non-finite values"
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, label=label: f"gradient of {label}: {m}")


def _gradients(outputs: tuple[Tensor, ...], cotangents: list[Tensor], inputs: Sequence[Tensor]) -> list[Tensor]:
    """d <cotangents, outputs> / d inputs; an output detached from the graph contributes zero (it is a bug that the
    comparison must see, not an error)."""
    live = [(o, c) for o, c in zip(outputs, cotangents, strict=True) if o.requires_grad]
    if not live:
        return [torch.zeros_like(t) for t in inputs]
    return list(torch.autograd.grad([o for o, _ in live], inputs, [c for _, c in live], materialize_grads=True,
                                    allow_unused=True))
