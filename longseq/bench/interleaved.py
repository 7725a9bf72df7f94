"""Timing several functions against each other in one process: warm-up, then interleaved rounds.

Ratios between two functions (a mixer and the op it is built on, ours and a peer's) are only meaningful when both
saw the same machine: calling them in turn, one call each per round, makes a change in load (another process, a
frequency step) hit all of them alike, which timing each in its own block does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def time_interleaved(calls: Mapping[str, Callable[[], object]], *, warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each entry: ``warmup`` untimed calls each, then ``repeats`` rounds of one call each."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"time_interleaved: warmup={warmup} must be >= 0 and repeats={repeats} >= 1")
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return times
