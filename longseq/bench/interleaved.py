"""Timing several functions against each other in one process: warm-up, then interleaved rounds; the options of
the scripts that do so.

Ratios between two functions (a mixer and the op it is built on, ours and a peer's) are only meaningful when both
saw the same machine: calling them in turn, one call each per round, makes a change in load (another process, a
frequency step) hit all of them alike, which timing each in its own block does not.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch


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


def scaling_parser(description: str, mixers: Sequence[str], *, repeats: int = 5) -> argparse.ArgumentParser:
    """The options shared by the scripts that time mixers against their ops over lengths (benchmarks/*_scaling.py):
    --mixers, --lengths, --d-model, --batch, --threads, --warmup, --repeats, --tolerance (allowed exponent
    difference), --json. ``parse_scaling_args`` validates them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mixers", default=",".join(mixers), help=f"comma-separated subset of {','.join(mixers)}")
    parser.add_argument("--lengths", default="8192,16384,32768,65536")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each function per point")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per point (>= 5)")
    parser.add_argument("--tolerance", type=float, default=0.1, help="allowed mixer exponent - op exponent")
    parser.add_argument("--json", type=Path, default=None, help="write every time and the fits here")
    return parser


def parse_scaling_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                       mixers: Sequence[str]) -> tuple[argparse.Namespace, list[str], list[int]]:
    """(args, the chosen mixers, the sorted lengths); a bad value exits through ``parser.error`` naming it. Sets
    torch's thread count when --threads is given."""
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.mixers.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(mixers))
    if unknown:
        parser.error(f"--mixers: unknown {', '.join(unknown)}; allowed: {', '.join(mixers)}")
    lengths = sorted({int(v) for v in args.lengths.split(",")})
    if len(lengths) < 2:
        parser.error("--lengths: at least two lengths are needed for a slope")
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args, chosen, lengths


def scaling_header(args: argparse.Namespace) -> str:
    """The line a scaling script prints first: the machine and the settings every point shares."""
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; float32, batch "
            f"{args.batch}, d_model {args.d_model}; inference_mode; {args.warmup} warm-up call(s), {args.repeats} "
            f"interleaved rounds per point")
