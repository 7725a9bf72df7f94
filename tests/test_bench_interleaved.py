"""Interleaved timing: warm-up calls are not timed, rounds alternate between the functions."""

from __future__ import annotations

import pytest

from longseq.bench.interleaved import time_interleaved


def test_rounds_alternate_and_warmup_is_untimed():
    order: list[str] = []
    times = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=2, repeats=3)
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="repeats=0"):
        time_interleaved({"a": lambda: None}, warmup=0, repeats=0)
