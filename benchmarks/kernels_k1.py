"""The compiled selective scan kernel (issue 17) against the plain paths, every ratio measured in this one run.

Rows (float32, ``--threads`` torch threads, inputs as ``benchmarks/selective_scan_speed.py`` makes them: a Mamba
block's call with D, z, delta_bias, softplus and the last state):
- forward (no grad): ``selective_scan`` (the compiled kernel), ``selective_scan_chunked`` (the plain PyTorch path),
  ``selective_scan_ref`` (our loop over time) and, when importable, mamba_ssm's ``selective_scan_ref``;
  target: compiled >= 30x faster than ``selective_scan_ref``;
- forward + backward (gradients w.r.t. every input): the compiled kernel against autograd through
  ``selective_scan_chunked``; target: >= 10x;
- decode: the per-token latency of a ``mamba`` mixer's ``step`` (d_model ``--d-model``, batch 1) after a context of
  1K .. 64K tokens prefilled with ``forward_stream``, with compiled kernels and with ``LONGSEQ_KERNELS=off`` (every
  compiled kernel off, whichever ops have one); and ``selective_state_update`` alone; target: >= 3x lower, flat
  in the context length.

Warm-up calls are excluded; the implementations of a row group are timed in interleaved rounds (one call each per
round, so a change in machine load hits them alike), and each row reports the median and interquartile range. The
kernel's first ``load`` (a build, or the on-disk cache) is timed apart. Outputs are checked against the oracle
(max |difference|). Results go to ``--out`` (JSON) with ``kernel_status()`` and the load average; run it on an
otherwise idle machine (a busy core stalls the multi-threaded rows far more than the single-threaded loops).

    .venv/bin/python benchmarks/kernels_k1.py                      # L 4096, D 512, N 16, 2 threads
    .venv/bin/python benchmarks/kernels_k1.py --contexts 1024,4096 --repeats 5 --out /tmp/k1.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.selective_scan_speed import call, make_inputs, mamba_ssm_ref
from longseq import kernels
from longseq.bench.interleaved import time_interleaved
from longseq.mixers import build
from longseq.ops.selective_scan import (
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update,
)

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(rows: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Median and IQR in ms of each row, timed in interleaved rounds after ``warmup`` untimed calls each
    (``longseq.bench.interleaved.time_interleaved``)."""
    out = {}
    for name, seconds in time_interleaved(rows, warmup=warmup, repeats=repeats).items():
        v = [1e3 * t for t in seconds]
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) >= 2 else (v[0], 0, v[0])
        out[name] = {"median_ms": statistics.median(v), "iqr_ms": q3 - q1, "repeats": len(v)}
    return out


def print_table(title: str, stats: dict[str, dict[str, float]], base: str) -> None:
    width = max(len(name) for name in stats)
    print(f"\n{title}\n| {'implementation':<{width}} | median ms | IQR ms | vs {base} |")
    for name, s in stats.items():
        ratio = stats[base]["median_ms"] / s["median_ms"]
        print(f"| {name:<{width}} | {s['median_ms']:9.3f} | {s['iqr_ms']:6.3f} | {ratio:8.2f}x |")


def forward_rows(t: dict[str, torch.Tensor], chunk_size: int) -> tuple[dict[str, Callable[[], object]], str]:
    rows: dict[str, Callable[[], object]] = {
        "compiled selective_scan": lambda: call(selective_scan, t, chunk_size=chunk_size),
        "plain selective_scan_chunked": lambda: call(selective_scan_chunked, t, chunk_size=chunk_size),
        "longseq selective_scan_ref": lambda: call(selective_scan_ref, t)}
    peer, note = mamba_ssm_ref()
    if peer is not None:
        rows[f"mamba_ssm {note} selective_scan_ref"] = lambda: call(peer, t)
    else:
        print(f"mamba_ssm row skipped: {note}")
    return rows, "longseq selective_scan_ref"


def backward_rows(t: dict[str, torch.Tensor], chunk_size: int) -> dict[str, Callable[[], object]]:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}

    def forward_backward(fn: Callable) -> Callable[[], object]:
        def run() -> None:
            for v in leaves.values():
                v.grad = None
            y, h = call(fn, leaves, chunk_size=chunk_size)
            (y.sum() + h.sum()).backward()
        return run

    return {"compiled selective_scan": forward_backward(selective_scan),
            "plain selective_scan_chunked (autograd)": forward_backward(selective_scan_chunked)}


@contextlib.contextmanager
def plain_path(plain: bool) -> Iterator[None]:
    """Every compiled kernel off (``LONGSEQ_KERNELS=off``, which the ops read on every call) while ``plain``."""
    if plain:
        os.environ[kernels.KERNELS_ENV] = "off"
    try:
        yield
    finally:
        os.environ.pop(kernels.KERNELS_ENV, None)


def stepping(mixer: torch.nn.Module, x_t: torch.Tensor, states: dict[str, object], path: str,
             tokens: int) -> Callable[[], None]:
    """``tokens`` steps of ``mixer`` from ``states[path]`` (path "compiled" or "plain"), keeping the last state."""
    def run() -> None:
        with plain_path(path == "plain"):
            for _ in range(tokens):
                states[path] = mixer.step(x_t, states[path])[1]
    return run


def decode_stats(d_model: int, contexts: list[int], tokens: int) -> list[dict[str, object]]:
    """Per-token step latency of a ``mamba`` mixer, kernels on and off, after each context length."""
    torch.manual_seed(0)
    mixer = build("mamba", d_model).eval()
    x_t = torch.randn(1, d_model)
    out = []
    with torch.no_grad():
        for context in contexts:
            state = mixer.init_state(1)
            _, state = mixer.forward_stream(torch.randn(1, context, d_model), state)
            states: dict[str, object] = {"compiled": state, "plain": state}  # steps never modify a state in place
            stats = interleaved({path: stepping(mixer, x_t, states, path, tokens) for path in states}, repeats=5)
            row: dict[str, object] = {"context": context,
                                      **{f"{k}_ms_per_token": v["median_ms"] / tokens for k, v in stats.items()}}
            row["ratio"] = row["plain_ms_per_token"] / row["compiled_ms_per_token"]
            print(f"  context {context:>6}: compiled {row['compiled_ms_per_token']:.4f} ms/token, plain "
                  f"{row['plain_ms_per_token']:.4f} ms/token, {row['ratio']:.2f}x")
            out.append(row)
    return out


def state_update_stats(d_inner: int, n: int, tokens: int) -> dict[str, dict[str, float]]:
    """``selective_state_update`` alone at batch 1, kernels on and off."""
    g = torch.Generator().manual_seed(0)
    state, x, dt, z = (torch.randn(*s, generator=g) for s in ((1, d_inner, n), (1, d_inner), (1, d_inner),
                                                                (1, d_inner)))
    dt = dt.abs()
    A, B, C, D = -torch.rand(d_inner, n, generator=g), torch.randn(1, n), torch.randn(1, n), torch.ones(d_inner)

    def run(path: str) -> Callable[[], None]:
        def go() -> None:
            with plain_path(path == "plain"):
                for _ in range(tokens):
                    selective_state_update(state, x, dt, A, B, C, D=D, z=z)
        return go

    with torch.no_grad():
        stats = interleaved({path: run(path) for path in ("compiled", "plain")}, repeats=5)
    return {k: {**v, "ms_per_call": v["median_ms"] / tokens} for k, v in stats.items()}


def write_result(result: dict[str, object], out: Path) -> None:
    """Close ``result`` with the machine's load and the kernels' status, and write it to ``out`` as JSON."""
    result["load_average_end"] = os.getloadavg()[0]
    result["kernel_status_end"] = kernels.kernel_status()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


def load_kernel_timed(name: str) -> tuple[float, float]:
    """Load (build, or read from the disk cache) the compiled kernel ``name`` and time it apart from the rows; print
    the machine line. Returns (load seconds, load average); exits when the kernel is unavailable."""
    t0 = time.perf_counter()
    loaded = kernels.load(name) is not None
    load_s = time.perf_counter() - t0
    if not loaded:
        sys.exit(f"the compiled kernel is unavailable: {kernels.kernel_status()}")
    load_avg = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_avg:.2f} on "
          f"{os.cpu_count()} CPUs; kernel load (build or disk cache) {load_s:.1f} s")
    return load_s, load_avg


def add_shared_arguments(ap: argparse.ArgumentParser, name: str, groups: str) -> None:
    """The options both kernel benchmarks take (``name``: the result's stem, ``groups``: what --skip may name)."""
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contexts", default="1024,4096,16384,65536", help="decode context lengths, comma-separated")
    ap.add_argument("--tokens", type=int, default=100, help="decode steps per timed call")
    ap.add_argument("--skip", default="", help=f"comma-separated groups to skip: {groups}")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"JSON result (default: benchmarks/results/{name}-cpu-<threads>t.json)")


def parse_shared(ap: argparse.ArgumentParser, name: str) -> tuple[argparse.Namespace, set[str], Path]:
    """Parse; refuse a LONGSEQ_KERNELS setting (the script switches it itself); set torch's threads -> (args, the
    groups to skip, the result's path)."""
    args = ap.parse_args()
    if kernels.KERNELS_ENV in os.environ:
        ap.error(f"unset {kernels.KERNELS_ENV}: this script compares the compiled and the plain path itself")
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"{name}-cpu-{args.threads}t.json"
    return args, {s for s in args.skip.split(",") if s}, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(ap, "kernels-k1", "forward, backward, decode")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--d", type=int, default=512, help="channels (d_inner)")
    ap.add_argument("--n", type=int, default=16, help="state size")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds of the forward rows (>= 3)")
    ap.add_argument("--backward-repeats", type=int, default=5, help="timed rounds of the forward+backward rows")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=256, help="the mamba mixer of the decode rows")
    args, skip, out = parse_shared(ap, "kernels-k1")
    if args.repeats < 3 or args.backward_repeats < 1:
        ap.error("--repeats must be >= 3 and --backward-repeats >= 1")

    load_s, load_avg = load_kernel_timed("selective_scan")
    print(f"B={args.batch} D={args.d} N={args.n} L={args.length} float32, chunk_size={args.chunk_size}")
    result: dict[str, object] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_start": load_avg, "kernel_load_s": load_s, "kernel_status": kernels.kernel_status(),
        "sizes": {"batch": args.batch, "d_inner": args.d, "d_state": args.n, "length": args.length,
                  "chunk_size": args.chunk_size, "dtype": "float32"}}
    t = make_inputs(args.batch, args.d, args.n, args.length)

    if "forward" not in skip:
        rows, base = forward_rows(t, args.chunk_size)
        with torch.no_grad():
            want_y, want_h = rows[base]()
            errors = {}
            for name, fn in rows.items():
                y, h = fn()
                errors[name] = max((y - want_y).abs().max().item(), (h - want_h).abs().max().item())
            stats = interleaved(rows, args.repeats)
        for name in stats:
            stats[name]["max_abs_diff_vs_ref"] = errors[name]
        print_table("forward (no grad)", stats, base)
        ratio = stats[base]["median_ms"] / stats["compiled selective_scan"]["median_ms"]
        print(f"compiled vs selective_scan_ref: {ratio:.1f}x (target >= 30x)")
        result["forward"] = {"rows": stats, "ratio_vs_ref": ratio}

    if "backward" not in skip:
        stats = interleaved(backward_rows(t, args.chunk_size), args.backward_repeats)
        print_table("forward + backward", stats, "plain selective_scan_chunked (autograd)")
        ratio = stats["plain selective_scan_chunked (autograd)"]["median_ms"] / stats["compiled selective_scan"][
            "median_ms"]
        print(f"compiled vs autograd through the plain path: {ratio:.1f}x (target >= 10x)")
        result["forward_backward"] = {"rows": stats, "ratio_vs_plain": ratio}

    if "decode" not in skip:
        print(f"\ndecode: mamba d_model {args.d_model}, batch 1, {args.tokens} steps per timed call")
        contexts = [int(c) for c in args.contexts.split(",") if c]
        result["decode"] = decode_stats(args.d_model, contexts, args.tokens)
        single = state_update_stats(2 * args.d_model, args.n, args.tokens)
        print(f"  selective_state_update alone (d_inner {2 * args.d_model}): compiled "
              f"{single['compiled']['ms_per_call']:.4f} ms, plain {single['plain']['ms_per_call']:.4f} ms")
        result["state_update"] = single

    write_result(result, out)


if __name__ == "__main__":
    main()
