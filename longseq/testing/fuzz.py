"""Property-based fuzzing of the contract: drawn cases and the checks each one must pass (docs/design.md §7).

A ``FuzzCase`` is one draw, independent of the mixer: sizes, a seed (weights and inputs), masks, a schedule of
``forward_stream``/``step`` calls, a dtype and which of the mixer's ``test_hypers``. Its repr is valid Python, so a
case hypothesis shrank to pastes into ``@example(case=...)`` as a regression example. ``check_case`` runs the
contract's own checks (``contract.py``) on it: nothing here re-states the contract.

Needs hypothesis (a dev dependency): only the tests import this module.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Literal

import torch
from hypothesis import strategies as st
from torch import Tensor

from longseq.mixers import Mixer, Pattern, build, mixer_class
from longseq.testing.contract import (
    check_batch_independence,
    check_causal_prefix,
    check_float32,
    check_masks,
    check_mixed_modes,
)
from longseq.testing.inputs import Schedule, Sizes
from longseq.testing.report import D_MODEL

MAX_BATCH = 3
MAX_LEN = 40
# Lengths that no internal chunk, block or window of a mixer's test_hypers divides (all are at most 12).
PRIME_LENGTHS = (13, 17, 19, 23, 29, 31, 37)
MAX_CUTS = 6  # chunk boundaries per schedule
Dtype = Literal["float64", "float32"]


@dataclasses.dataclass(frozen=True)
class FuzzCase:
    """One drawn case. Masks are strings per row, "1" valid and "0" padding (None: no mask given); ``schedule`` is
    causal patterns' sequence of calls, ``("stream", n)`` one ``forward_stream`` on n tokens and ``("step", n)`` n
    ``step`` calls (empty: one chunk); ``ctx_len`` is the memory's length in cross patterns (0: as long as x);
    ``variant`` picks among the test_hypers that support the pattern (modulo their number)."""

    batch: int
    seq_len: int
    seed: int = 0
    mask: tuple[str, ...] | None = None
    ctx_len: int = 0
    context_mask: tuple[str, ...] | None = None
    schedule: tuple[tuple[Literal["stream", "step"], int], ...] = ()
    dtype: Dtype = "float64"
    variant: int = 0

    def sizes(self) -> Sizes:
        return Sizes(batch=self.batch, seq_len=self.seq_len, ctx_len=self.ctx_len or self.seq_len, seed=self.seed)

    def schedules(self) -> list[Schedule]:
        return [list(self.schedule) or [("stream", self.seq_len)]]


def mask_tensor(rows: tuple[str, ...] | None, batch: int, length: int, what: str) -> Tensor | None:
    """bool (batch, length) from rows of "1"/"0"; None stays None."""
    if rows is None:
        return None
    if len(rows) != batch or any(len(r) != length or set(r) - {"0", "1"} for r in rows):
        raise ValueError(f"{what}={rows!r}: expected {batch} rows of {length} characters '0'/'1'")
    return torch.tensor([[c == "1" for c in r] for r in rows], dtype=torch.bool)


def hypers_for(name: str, pattern: Pattern, variant: int) -> dict:
    """The ``variant``-th (modulo their number) of the mixer's test_hypers that support ``pattern``."""
    cls = mixer_class(name)
    options = [h for h in cls.test_hypers if pattern in cls.supported_patterns(**h)]
    return options[variant % len(options)]


def run_case(name: str, pattern: Pattern, case: FuzzCase) -> None:
    """Build registered mixer ``name`` for the case (seed ``case.seed``, float64, eval) and ``check_case`` it."""
    torch.manual_seed(case.seed)
    mixer = build(name, D_MODEL, pattern=pattern, **hypers_for(name, pattern, case.variant))
    check_case(mixer.double().eval(), case)


def check_case(mixer: Mixer, case: FuzzCase) -> None:
    """The contract's checks on one case: float64 -> the exact equalities (causality, a schedule of streams and
    steps = forward, masks and empty rows, batch independence); float32 -> within ``float32_tolerance`` of float64,
    with the same masks and schedule."""
    pattern = mixer.pattern
    sizes, schedules = case.sizes(), case.schedules()
    mask = mask_tensor(case.mask, case.batch, case.seq_len, "mask")
    context_mask = None
    if pattern.is_cross:
        context_mask = mask_tensor(case.context_mask, case.batch, sizes.ctx_len, "context_mask")
    if case.dtype == "float32":
        check_float32(mixer, sizes, mask=mask, context_mask=context_mask, schedules=schedules)
        return
    if pattern.is_causal:
        check_causal_prefix(mixer, sizes)
        check_mixed_modes(mixer, sizes, schedules)
    if mask is not None or context_mask is not None:
        if mask is None:
            mask = torch.ones(case.batch, case.seq_len, dtype=torch.bool)
        check_masks(mixer, mask, context_mask, sizes, schedules=schedules, what="drawn masks")
    if case.batch > 1:
        check_batch_independence(mixer, sizes)


# -- strategies -----------------------------------------------------------------------------------------------------


def mask_rows(batch: int, length: int) -> st.SearchStrategy[tuple[str, ...]]:
    """``batch`` rows, each full, empty, left- or right-padded, or with random holes (shrinking towards full)."""
    row = st.one_of(
        st.just("1" * length),
        st.just("0" * length),
        st.integers(1, length).map(lambda k: "0" * k + "1" * (length - k)),
        st.integers(1, length).map(lambda k: "1" * (length - k) + "0" * k),
        st.lists(st.booleans(), min_size=length, max_size=length).map(lambda bits: "".join("01"[b] for b in bits)),
    )
    return st.tuples(*[row] * batch)


@st.composite
def schedules(draw: st.DrawFn, length: int) -> tuple[tuple[Literal["stream", "step"], int], ...]:
    """Cut points at random positions; each piece one ``forward_stream`` call or step by step."""
    cuts = sorted(draw(st.sets(st.integers(1, length - 1), max_size=MAX_CUTS))) if length > 1 else []
    bounds = [0, *cuts, length]
    pieces = [b - a for a, b in itertools.pairwise(bounds)]
    modes = draw(st.lists(st.sampled_from(("stream", "step")), min_size=len(pieces), max_size=len(pieces)))
    return tuple(zip(modes, pieces, strict=True))


@st.composite
def fuzz_cases(draw: st.DrawFn) -> FuzzCase:
    """Cases for any pattern (``check_case`` ignores the schedule in non-causal patterns, the memory in self ones),
    so that one strategy, and one list of ``@example``s, serves every mixer x pattern."""
    batch = draw(st.integers(1, MAX_BATCH))
    length = draw(st.one_of(st.integers(1, MAX_LEN), st.sampled_from(PRIME_LENGTHS)))
    ctx_len = draw(st.integers(1, MAX_LEN))
    return FuzzCase(
        batch=batch,
        seq_len=length,
        seed=draw(st.integers(0, 2**16 - 1)),
        mask=draw(mask_rows(batch, length)),
        ctx_len=ctx_len,
        context_mask=draw(mask_rows(batch, ctx_len)),
        schedule=draw(schedules(length)),
        dtype=draw(st.sampled_from(("float64", "float64", "float64", "float32"))),  # 3 in 4 for the exact checks
        variant=draw(st.integers(0, 2)),
    )
