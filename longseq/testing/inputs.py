"""Inputs and drivers for the contract checks: random sequences, chunk splits, padded batches, mode schedules.

Everything is seeded, so a failing check fails the same way every time. Sizes are small (d_model 16, L 32) so
the whole registry is checked in CI; the float32 check alone runs at a longer length (the mixer's ``float32_len``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from longseq.mixers.base import Mixer
from longseq.state import State

MaskLayout = Literal["left", "right", "holes"]
# A schedule is a list of (mode, number of tokens): ("stream", 11) is one forward_stream call on 11 tokens,
# ("step", 5) is five step calls.
Schedule = list[tuple[Literal["stream", "step"], int]]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a check runs at; ``seed`` draws the inputs (the fuzz tests vary it, the contract suite keeps 0)."""

    batch: int = 2
    seq_len: int = 32
    ctx_len: int = 24
    seed: int = 0


SIZES = Sizes()  # what the contract runs at: d_model 16 (report.D_MODEL), L 32, memory 24

def make_inputs(mixer: Mixer, sizes: Sizes, seed: int | None = None,
                dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor | None]:
    """x: (B, L, D) and, for cross patterns, context: (B, S, D), drawn from ``seed`` (default ``sizes.seed``)."""
    g = torch.Generator().manual_seed(sizes.seed if seed is None else seed)
    x = torch.randn(sizes.batch, sizes.seq_len, mixer.d_model, generator=g, dtype=torch.float64).to(dtype)
    ctx = None
    if mixer.pattern.is_cross:
        ctx = torch.randn(sizes.batch, sizes.ctx_len, mixer.d_model, generator=g, dtype=torch.float64).to(dtype)
    return x, ctx


# -- chunk splits ----------------------------------------------------------------------------------------------


def random_splits(length: int, seed: int) -> list[int]:
    """Chunk sizes summing to ``length``: a mix of single tokens and chunks up to a third of the length."""
    g = torch.Generator().manual_seed(seed)
    sizes, left = [], length
    while left:
        n = min(left, int(torch.randint(1, max(2, length // 3), (1,), generator=g)))
        sizes.append(n)
        left -= n
    return sizes


def long_splits(length: int) -> list[list[int]]:
    """Splits whose chunks are longer than any internal block a mixer may use (its test chunk sizes are below
    L/2): one token then the rest, two near-halves, and 3 + 13 + the rest (chunks that straddle block edges)."""
    half = length // 2
    splits = [[1, length - 1], [half - 1, length - half + 1]]
    if length > 16:
        splits.append([3, 13, length - 16])
    return splits


def all_splits(length: int) -> list[list[int]]:
    return [random_splits(length, seed) for seed in (0, 1, 2)] + long_splits(length)


# -- running the modes -----------------------------------------------------------------------------------------


def stream(mixer: Mixer, x: Tensor, ctx: Tensor | None, chunks: Sequence[int], *, mask: Tensor | None = None,
           context_mask: Tensor | None = None, state: State | None = None) -> tuple[Tensor, State]:
    """``forward_stream`` over ``chunks`` (sizes summing to x's length); returns (y: (B, L, D), final state)."""
    return run_schedule(mixer, x, ctx, [("stream", n) for n in chunks], mask=mask, context_mask=context_mask,
                        state=state)


def step_all(mixer: Mixer, x: Tensor, ctx: Tensor | None, *, mask: Tensor | None = None,
             context_mask: Tensor | None = None) -> tuple[Tensor, State]:
    """``step`` on every token."""
    return run_schedule(mixer, x, ctx, [("step", x.shape[1])], mask=mask, context_mask=context_mask)


def schedule_calls(schedule: Schedule) -> Iterator[tuple[Literal["stream", "step"], int, int]]:
    """The calls a schedule makes, as (mode, first token, number of tokens): a step call is one token."""
    t = 0
    for mode, n in schedule:
        if mode == "stream":
            yield mode, t, n
        else:
            yield from ((mode, i, 1) for i in range(t, t + n))
        t += n


def run_schedule(mixer: Mixer, x: Tensor, ctx: Tensor | None, schedule: Schedule, *, mask: Tensor | None = None,
                 context_mask: Tensor | None = None, state: State | None = None) -> tuple[Tensor, State]:
    """Feed x through ``forward_stream`` and ``step`` calls as ``schedule`` says, starting from ``state`` (or a
    fresh one). Returns the concatenated outputs and the final state."""
    if sum(n for _, n in schedule) != x.shape[1]:
        raise ValueError(f"schedule {schedule} does not cover the {x.shape[1]} tokens of x")
    if state is None:
        state = mixer.init_state(x.shape[0], context=ctx, context_mask=context_mask)
    ys = []
    for mode, t, n in schedule_calls(schedule):
        m = None if mask is None else mask[:, t:t + n]
        if mode == "stream":
            y, state = mixer.forward_stream(x[:, t:t + n], state, mask=m)
        else:
            y_t, state = mixer.step(x[:, t], state, mask_t=None if m is None else m[:, 0])
            if y_t.shape != x[:, t].shape:
                raise AssertionError(f"{mixer.name}: step returned shape {tuple(y_t.shape)}, "
                                     f"expected {tuple(x[:, t].shape)}")
            y = y_t[:, None]
        ys.append(y)
    return torch.cat(ys, dim=1), state


def mixed_schedules(length: int) -> list[Schedule]:
    """A prefill then decode, decode then a chunk, and alternations of the two, with chunks longer than 8."""
    return [
        [("stream", length // 2), ("step", length - length // 2)],
        [("step", 3), ("stream", 11), ("step", 5), ("stream", length - 19)],
        [("stream", 11), ("step", 2), ("stream", 9), ("step", length - 22)],
    ]


# -- padded batches --------------------------------------------------------------------------------------------


def layout_masks(layout: MaskLayout, batch: int, length: int, seed: int) -> Tensor:
    """bool (B, L), True = valid.

    ``left`` / ``right``: row b holds ``L - 3b - 5`` valid tokens at that end. ``holes``: padding inside the
    sequence — row 0 has scattered holes, row 1 a leading hole and a long gap in the middle, the last row no valid
    token at all (rows beyond the third have scattered holes too).
    """
    mask = torch.zeros(batch, length, dtype=torch.bool)
    if layout in ("left", "right"):
        for b in range(batch):
            n = max(1, length - 3 * b - 5)
            if layout == "right":
                mask[b, :n] = True
            else:
                mask[b, length - n:] = True
        return mask
    g = torch.Generator().manual_seed(seed)
    for b in range(batch - 1):
        if b == 1:
            mask[b, 2:] = True
            mask[b, length // 6: length // 2 + 2] = False
        else:
            mask[b] = torch.rand(length, generator=g) < 0.7
            mask[b, length - 1] = False  # a hole at the end too
            mask[b, 1] = True
    return mask


def padded_batch(x: Tensor, mask: Tensor, seed: int) -> Tensor:
    """x's valid tokens kept at their positions; the padded positions filled with loud junk (a leak cannot hide)."""
    g = torch.Generator().manual_seed(seed)
    junk = 10 * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
    return torch.where(mask[..., None], x, junk)
