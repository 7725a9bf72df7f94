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


def test_scaling_options_are_validated_naming_the_option(capsys):
    from longseq.bench.interleaved import parse_scaling_args, scaling_parser

    parser = scaling_parser("demo", ["a", "b"], repeats=7)
    args, mixers, lengths = parse_scaling_args(parser, ["--mixers", "b", "--lengths", "64,16,32"], ["a", "b"])
    assert (mixers, lengths, args.repeats, args.tolerance) == (["b"], [16, 32, 64], 7, 0.1)
    for argv, fragment in ((["--mixers", "c"], "--mixers: unknown c"), (["--lengths", "8"], "--lengths"),
                           (["--repeats", "2"], "--repeats must be >= 5")):
        with pytest.raises(SystemExit):
            parse_scaling_args(parser, argv, ["a", "b"])
        assert fragment in capsys.readouterr().err
