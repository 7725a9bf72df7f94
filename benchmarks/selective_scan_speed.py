"""Forward time of Mamba-1's selective scan: ``selective_scan`` (plain and ``compile=True``) against the
loop-over-time oracles, ours (``selective_scan_ref``) and, when installed, mamba_ssm's ``selective_scan_ref``.

Every implementation gets the same call as in a Mamba block (D skip, z gate, delta_bias, delta_softplus, the last
state), float32, under ``torch.no_grad``, in this process with ``--threads`` torch threads. Each is called twice to
warm up (the compiled path compiles then), then the implementations are timed in interleaved rounds (one call each
per round, so that a change in machine load hits all of them alike) and each row reports the median and the
interquartile range over ``--repeats`` rounds, and the ratios of the medians measured in this run. The outputs are
checked against our oracle (max |difference|) so that every row computes the same function.

Run it on an otherwise idle machine (the 1-minute load average is printed): ``selective_scan`` runs a few hundred
multi-threaded tensor operations per call, and when another process takes a core, every one of them waits at its
thread barrier, so its time grows by orders of magnitude, while the loop-over-time oracles (many small single-threaded
operations) barely move. A large IQR says that happened.

mamba_ssm is imported as ``benchmarks/peers`` does on a machine without its GPU build (``mamba_ssm_stubs``; install
line in ``benchmarks/peers/README.md``); without it, its row is skipped with the reason.

    .venv/bin/python benchmarks/selective_scan_speed.py          # L 4096, D 512, N 16, batch 1, 2 threads, 7 repeats
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make ``benchmarks.peers`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longseq.ops.selective_scan import selective_scan, selective_scan_ref

ScanFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def mamba_ssm_ref() -> tuple[ScanFn | None, str]:
    """mamba_ssm's ``selective_scan_ref`` and its version, or None and why not."""
    try:
        from benchmarks.peers.mamba_ssm_stubs import gpu_free_import

        (interface,) = gpu_free_import("mamba_ssm.ops.selective_scan_interface")
    except ImportError as err:
        return None, f"mamba_ssm not importable ({err})"
    import importlib.metadata

    return interface.selective_scan_ref, importlib.metadata.version("mamba_ssm")


def make_inputs(batch: int, d: int, n: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mamba-like values: A = -(1..N) (S4D-real), delta_bias = softplus^-1 of steps in [1e-3, 0.1]."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(d, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    return {"u": randn(batch, d, length), "delta": randn(batch, d, length) * 0.1,
            "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1), "B": randn(batch, n, length),
            "C": randn(batch, n, length), "D": torch.ones(d), "z": randn(batch, d, length),
            "delta_bias": dt + torch.log(-torch.expm1(-dt))}


def call(fn: ScanFn, t: dict[str, torch.Tensor], **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, True, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--d", type=int, default=512, help="channels (d_inner)")
    ap.add_argument("--n", type=int, default=16, help="state size")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (>= 5)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--no-compile", action="store_true", help="skip the compile=True row")
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be >= 5")
    torch.set_num_threads(args.threads)
    t = make_inputs(args.batch, args.d, args.n, args.length)

    rows: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
        "selective_scan": lambda: call(selective_scan, t, chunk_size=args.chunk_size)}
    if not args.no_compile:
        rows["selective_scan compile=True"] = lambda: call(selective_scan, t, chunk_size=args.chunk_size, compile=True)
    rows["longseq selective_scan_ref"] = lambda: call(selective_scan_ref, t)
    peer, peer_note = mamba_ssm_ref()
    if peer is not None:
        rows[f"mamba_ssm {peer_note} selective_scan_ref"] = lambda: call(peer, t)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={args.batch} D={args.d} N={args.n} "
          f"L={args.length} float32, chunk_size={args.chunk_size}, forward (no grad), {args.repeats} rounds; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if peer is None:
        print(f"mamba_ssm row skipped: {peer_note}")
    times: dict[str, list[float]] = {name: [] for name in rows}
    with torch.no_grad():
        want_y, want_h = rows["longseq selective_scan_ref"]()
        for name, fn in rows.items():
            t0 = time.perf_counter()
            y, h = fn()
            fn()
            err = max((y - want_y).abs().max().item(), (h - want_h).abs().max().item())
            print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s, max |diff| vs our ref {err:.1e}")
        for _ in range(args.repeats):
            for name, fn in rows.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(1e3 * (time.perf_counter() - t0))

    medians = {name: statistics.median(v) for name, v in times.items()}
    base = next((name for name in rows if name.startswith("mamba_ssm")), "longseq selective_scan_ref")
    width = max(len(name) for name in rows)
    print(f"\n| {'implementation':<{width}} | median ms | IQR ms | speed-up vs {base} |")
    print(f"|{'-' * (width + 2)}|-----------|--------|{'-' * (len(base) + 14)}|")
    for name, v in times.items():
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
        print(f"| {name:<{width}} | {medians[name]:9.1f} | {q3 - q1:6.1f} | "
              f"{medians[base] / medians[name]:>{len(base) + 11}.2f}x |")


if __name__ == "__main__":
    main()
