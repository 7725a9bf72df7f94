"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

``lr_at`` is a pure function of the step, so the schedule can be tested at its boundaries and recomputed on
resume; ``warmup_cosine_scheduler`` wraps it in a ``LambdaLR`` whose state is plain numbers (checkpointable
as JSON).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning rate used by the update with index ``step`` (0-based: ``step`` updates already done).

    - warmup, ``step < warmup_steps``: ``base_lr * (step + 1) / warmup_steps``, so the first update already
      moves (no wasted step at lr 0) and update ``warmup_steps - 1`` uses ``base_lr``;
    - then cosine from ``base_lr`` at ``step == warmup_steps`` to ``min_lr_ratio * base_lr`` at
      ``step == total_steps``, constant at that floor afterwards.
    """
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must satisfy 0 <= warmup_steps < total_steps={total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio={min_lr_ratio} must lie in [0, 1]")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    floor = min_lr_ratio * base_lr
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """``lr_at`` as a multiplier of each parameter group's base lr (what ``LambdaLR`` expects).

    A class rather than a closure because ``LambdaLR.state_dict`` saves a callable object's attributes (here
    three numbers), while closures are skipped.
    """

    def __init__(self, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        # Validate now rather than at the first scheduler step.
        self(0)

    def __call__(self, step: int) -> float:
        return lr_at(
            step,
            base_lr=1.0,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            min_lr_ratio=self.min_lr_ratio,
        )


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """A ``LambdaLR`` that sets every group's lr to ``lr_at(step, base_lr=<group's initial lr>, ...)``.

    Call ``scheduler.step()`` after each ``optimizer.step()``; update ``s`` then runs at ``lr_at(s)``.
    """
    return LambdaLR(
        optimizer,
        WarmupCosine(warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio),
    )
