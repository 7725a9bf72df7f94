"""The compiled recurrence kernels (issue 17, part 2: ``longseq/kernels/csrc/recurrence.cpp``) against the plain
PyTorch paths, every ratio measured in this one run.

Rows (float32, ``--threads`` torch threads, batch 1 unless said):
- decode: the per-token latency of the ``mamba2``, ``s4d`` and ``ema`` mixers' ``step`` (d_model ``--d-model``,
  default hypers) after a context of 1K .. 64K tokens prefilled with ``forward_stream``, with compiled kernels and
  with ``LONGSEQ_KERNELS=off`` (every compiled kernel off); target: >= 3x lower, flat in the context length;
- ops, one decode step each: ``lti_step`` (S4D's recurrence, d_model channels, d_state/2 complex modes),
  ``ssd_state_update`` (Mamba-2's, its heads), ``causal_conv1d_update`` (Mamba-2's short conv);
- ops over a chunk, forward (no grad) and forward + backward: ``lti_scan`` (``--chunk`` tokens; plain = its loop),
  ``ssd_chunked`` (``--chunk`` tokens; plain = the chunked SSD algorithm), ``causal_conv1d`` (``--length`` tokens,
  channels-last as ``ShortConv`` passes it, with and without a mask; plain = ``F.conv1d``, packing when masked).

Warm-up calls are excluded; the two paths of a row are timed in interleaved rounds (one call each per round, so a
change in machine load hits both alike), and each row reports the median and interquartile range. The kernel's
first ``load`` (a build, or the on-disk cache) is timed apart. Results go to ``--out`` (JSON) with
``kernel_status()`` and the load average; run it on an otherwise idle machine.

    .venv/bin/python benchmarks/kernels_k2.py                          # d_model 256, contexts 1K..64K, 2 threads
    .venv/bin/python benchmarks/kernels_k2.py --contexts 1024,4096 --skip chunks --out /tmp/k2.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernels_k1 import (
    add_shared_arguments,
    interleaved,
    load_kernel_timed,
    parse_shared,
    plain_path,
    print_table,
    write_result,
)
from longseq import kernels
from longseq.mixers import build
from longseq.ops.lti_recurrence import lti_scan, lti_step
from longseq.ops.short_conv import causal_conv1d, causal_conv1d_update
from longseq.ops.ssd import ssd_chunked, ssd_state_update

RESULTS = Path(__file__).resolve().parent / "results"
PATHS = ("compiled", "plain")
DECODE_MIXERS = ("mamba2", "s4d", "ema")


def both_paths(fn: Callable[[], object], calls: int = 1) -> dict[str, Callable[[], None]]:
    """The two rows of a comparison: ``calls`` calls of ``fn`` with kernels on, and with them off."""
    def row(path: str) -> Callable[[], None]:
        def run() -> None:
            with plain_path(path == "plain"):
                for _ in range(calls):
                    fn()
        return run
    return {path: row(path) for path in PATHS}


def ratio(stats: dict[str, dict[str, float]]) -> float:
    return stats["plain"]["median_ms"] / stats["compiled"]["median_ms"]


def decode_stats(name: str, d_model: int, contexts: list[int], tokens: int,
                 repeats: int) -> list[dict[str, object]]:
    """Per-token ``step`` latency of mixer ``name``, kernels on and off, after each context length."""
    torch.manual_seed(0)
    mixer = build(name, d_model).eval()
    x_t = torch.randn(1, d_model)
    out = []
    with torch.no_grad():
        for context in contexts:
            state = mixer.init_state(1)
            t0 = time.perf_counter()
            _, state = mixer.forward_stream(torch.randn(1, context, d_model), state)
            prefill_s = time.perf_counter() - t0
            states = dict.fromkeys(PATHS, state)  # a step never modifies its state in place

            def stepping(path: str) -> Callable[[], None]:
                def run() -> None:
                    with plain_path(path == "plain"):
                        for _ in range(tokens):
                            states[path] = mixer.step(x_t, states[path])[1]  # noqa: B023
                return run
            stats = interleaved({path: stepping(path) for path in PATHS}, repeats=repeats)
            row: dict[str, object] = {"mixer": name, "context": context, "prefill_s": prefill_s,
                                      **{f"{k}_ms_per_token": v["median_ms"] / tokens for k, v in stats.items()},
                                      **{f"{k}_iqr_ms_per_token": v["iqr_ms"] / tokens for k, v in stats.items()}}
            row["ratio"] = ratio(stats)
            print(f"  {name:>6} context {context:>6}: compiled {row['compiled_ms_per_token']:.4f} ms/token, plain "
                  f"{row['plain_ms_per_token']:.4f} ms/token, {row['ratio']:.2f}x (prefill {prefill_s:.1f} s)")
            out.append(row)
    return out


def step_op_rows(d_model: int, d_state: int, ssd_state: int, headdim: int,
                 conv_width: int) -> dict[str, Callable[[], object]]:
    """One decode step of each op at a default mixer's sizes (d_model channels; Mamba-2: expand 2)."""
    g = torch.Generator().manual_seed(0)
    modes, heads, inner = d_state // 2, 2 * d_model // headdim, 2 * d_model
    x = torch.randn(1, d_model, modes, dtype=torch.complex64, generator=g)
    dA = 0.9 * torch.randn(d_model, modes, dtype=torch.complex64, generator=g).sgn()
    dB, C = (torch.randn(d_model, modes, dtype=torch.complex64, generator=g) for _ in range(2))
    u = torch.randn(1, d_model, generator=g)
    state = torch.randn(1, heads, headdim, ssd_state, generator=g)
    xh, B1, C1 = (torch.randn(*s, generator=g) for s in ((1, heads, headdim), (1, 1, ssd_state), (1, 1, ssd_state)))
    dt, A, D = torch.rand(1, heads, generator=g) * 0.1, -torch.rand(heads, generator=g), torch.ones(heads)
    channels = inner + 2 * ssd_state
    window, w, b = (torch.randn(*s, generator=g) for s in ((1, channels, conv_width - 1), (channels, conv_width),
                                                          (channels,)))
    x_t = torch.randn(1, channels, generator=g)
    return {"lti_step": lambda: lti_step(x, u, dA, dB, C),
            "ssd_state_update": lambda: ssd_state_update(state, xh, dt, A, B1, C1, D=D),
            "causal_conv1d_update": lambda: causal_conv1d_update(x_t, window, w, b, activation="silu")}


def chunk_op_rows(d_model: int, d_state: int, ssd_state: int, headdim: int, conv_width: int, chunk: int,
                  length: int) -> dict[str, tuple[Callable[[], tuple[torch.Tensor, ...]], list[torch.Tensor]]]:
    """Each op over a chunk: (the call, its differentiable inputs)."""
    g = torch.Generator().manual_seed(1)

    def leaf(*shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, dtype=dtype, generator=g)).requires_grad_()
    modes, heads, inner = d_state // 2, 2 * d_model // headdim, 2 * d_model
    u, x0 = leaf(1, d_model, chunk), leaf(1, d_model, modes, dtype=torch.complex64)
    decay = (0.9 * torch.randn(d_model, modes, dtype=torch.complex64, generator=g).sgn()).requires_grad_()
    dB, C = leaf(d_model, modes, dtype=torch.complex64), leaf(d_model, modes, dtype=torch.complex64)
    x, dt = leaf(1, chunk, heads, headdim), leaf(1, chunk, heads, scale=0.1)
    A = (-torch.rand(heads, generator=g)).requires_grad_()
    B1, C1, s0 = leaf(1, chunk, 1, ssd_state), leaf(1, chunk, 1, ssd_state), leaf(1, heads, headdim, ssd_state)
    channels = inner + 2 * ssd_state
    xc, w, b = leaf(1, length, channels), leaf(channels, conv_width), leaf(channels)
    mask = torch.rand(1, length, generator=g) > 0.1
    return {
        "lti_scan": (lambda: lti_scan(u, x0, decay, dB, C), [u, x0, decay, dB, C]),
        "ssd_chunked": (lambda: ssd_chunked(x, dt.abs(), A, B1, C1, 64, D=None, initial_states=s0,
                                            return_final_states=True), [x, dt, A, B1, C1, s0]),
        "causal_conv1d": (lambda: (causal_conv1d(xc.transpose(1, 2), w, b, activation="silu"),), [xc, w, b]),
        "causal_conv1d masked": (lambda: (causal_conv1d(xc.transpose(1, 2), w, b, activation="silu", mask=mask),),
                                 [xc, w, b]),
    }


def forward_backward(fn: Callable[[], tuple[torch.Tensor, ...]], leaves: list[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        outputs = fn()
        loss = sum((o.real if o.is_complex() else o).sum() for o in outputs)
        torch.autograd.grad(loss, leaves)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(ap, "kernels-k2", "decode, steps, chunks")
    ap.add_argument("--d-model", type=int, default=256, help="the mixers' width (the bench's default)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per row (>= 3)")
    ap.add_argument("--chunk", type=int, default=64, help="tokens of the lti_scan and ssd_chunked chunk rows")
    ap.add_argument("--length", type=int, default=4096, help="tokens of the causal_conv1d rows")
    args, skip, out = parse_shared(ap, "kernels-k2")
    if args.repeats < 3:
        ap.error("--repeats must be >= 3")

    load_s, load_avg = load_kernel_timed("recurrence")
    sizes = {"d_model": args.d_model, "s4d_d_state": 64, "mamba2_d_state": 64, "mamba2_headdim": 64, "d_conv": 4,
             "chunk": args.chunk, "conv_length": args.length, "dtype": "float32", "batch": 1}
    result: dict[str, object] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_start": load_avg, "kernel_load_s": load_s, "kernel_status": kernels.kernel_status(),
        "sizes": sizes}
    op_sizes = (args.d_model, sizes["s4d_d_state"], sizes["mamba2_d_state"], sizes["mamba2_headdim"],
                sizes["d_conv"])

    if "decode" not in skip:
        print(f"\ndecode: d_model {args.d_model}, batch 1, {args.tokens} steps per timed call")
        contexts = [int(c) for c in args.contexts.split(",") if c]
        result["decode"] = [row for name in DECODE_MIXERS
                            for row in decode_stats(name, args.d_model, contexts, args.tokens, args.repeats)]

    if "steps" not in skip:
        result["steps"] = {}
        with torch.no_grad():
            for name, fn in step_op_rows(*op_sizes).items():
                stats = interleaved(both_paths(fn, calls=args.tokens), args.repeats)
                stats = {k: {**v, "ms_per_call": v["median_ms"] / args.tokens} for k, v in stats.items()}
                print(f"  {name}: compiled {stats['compiled']['ms_per_call']:.4f} ms, plain "
                      f"{stats['plain']['ms_per_call']:.4f} ms, {ratio(stats):.2f}x")
                result["steps"][name] = {"rows": stats, "ratio": ratio(stats)}

    if "chunks" not in skip:
        result["chunks"] = {}
        for name, (fn, leaves) in chunk_op_rows(*op_sizes, args.chunk, args.length).items():
            with torch.no_grad():
                forward = interleaved(both_paths(fn), args.repeats)
            backward = interleaved(both_paths(forward_backward(fn, leaves)), args.repeats)
            print_table(f"{name}: forward (no grad)", forward, "plain")
            print_table(f"{name}: forward + backward", backward, "plain")
            result["chunks"][name] = {"forward": forward, "forward_ratio": ratio(forward),
                                      "forward_backward": backward, "forward_backward_ratio": ratio(backward)}

    write_result(result, out)


if __name__ == "__main__":
    main()
