"""Cross-check of the speed bench against a direct, in-process timing of what ``attention`` computes.

The direct timing runs, in this process, the operations of ``build("attention", d_model)`` in its default SDPA
form — q/k/v projections (``nn.Linear``, no bias), RoPE, ``F.scaled_dot_product_attention(is_causal=True)`` called
directly, the output projection — for ``fwd`` (no grad) and ``fwdbwd`` (backward of a random cotangent w.r.t. the
weights and the input), with the bench's own timing loop. Then ``run_speed_bench`` measures ``attention`` and
``attention[impl=math]`` (each point in a child process) in the same invocation. The script prints, per length and
mode, the ratio of the direct median to the bench's median for ``attention`` (acceptance: within 20%), and the
scaling exponent of ``attention[impl=math]`` (acceptance: between 1.8 and 2.1). Exit status 1 when a check fails.

    .venv/bin/python benchmarks/sdpa_check.py                  # d_model 256, batch 1, L = 4096, 8192, 16384
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.bench.fit import scaling_table
from longseq.bench.isolate import median_and_iqr, time_calls
from longseq.bench.speed import run_speed_bench
from longseq.ops.rotary import apply_rotary, rotary_cos_sin

RATIO_TOLERANCE = 0.20
MATH_EXPONENT_RANGE = (1.8, 2.1)


class DirectAttention(nn.Module):
    """Causal self-attention written out: the operations of ``attention`` (impl="sdpa", RoPE, no bias).
    x: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q, self.k, self.v, self.out = (nn.Linear(d_model, d_model, bias=False) for _ in range(4))

    def _heads(self, t: Tensor) -> Tensor:
        b, length, _ = t.shape
        return t.view(b, length, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        positions = torch.arange(length, device=x.device).expand(b, length)
        cos, sin = rotary_cos_sin(positions, self.head_dim, dtype=q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, length, d))


def time_direct(length: int, mode: str, args: argparse.Namespace) -> float:
    """Median seconds of one direct fwd or fwdbwd call at ``length``, after one warm-up call."""
    torch.manual_seed(0)
    module = DirectAttention(args.d_model, max(1, args.d_model // 64)).eval()
    x = torch.randn(args.batch, length, args.d_model)
    if mode == "fwd":
        def call() -> None:
            with torch.no_grad():
                module(x)
    else:
        x.requires_grad_()
        cotangent = torch.randn_like(x)

        def call() -> None:
            for t in (*module.parameters(), x):
                t.grad = None
            module(x).backward(cotangent)
    call()
    times = time_calls(call, repeats=args.repeats, min_time=args.min_time, sync=lambda: None)
    return median_and_iqr(times)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384],
                        help="lengths compared with the direct timing")
    parser.add_argument("--math-lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384],
                        help="lengths for the impl=math scaling exponent (at least four must fit in memory; from "
                             "2048, because at 1024 the score matrices still fit in a CPU's cache)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads here and in the children")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    modes = ("fwd", "fwdbwd")
    common = dict(modes=modes, d_model=args.d_model, batch=args.batch, threads=torch.get_num_threads(),
                  repeats=args.repeats, min_time=args.min_time, command=shlex.join(sys.argv))

    def show(row: dict) -> None:
        median = "-" if row["median_s"] is None else f"{row['median_s'] * 1e3:10.1f} ms"
        print(f"bench   {row['label']:<22} L={row['seq_len']:>6} {row['mode']:<7} {row['status']:<8} {median}",
              flush=True)

    # Direct and bench timings alternate per length, so that a change in the machine's load hits both alike.
    direct: dict[tuple[int, str], float] = {}
    sdpa_rows: list[dict] = []
    for length in args.lengths:
        for mode in modes:
            direct[(length, mode)] = time_direct(length, mode, args)
            print(f"direct  {'(in process)':<22} L={length:>6} {mode:<7} {'':<8} "
                  f"{direct[(length, mode)] * 1e3:10.1f} ms", flush=True)
        sdpa_rows += run_speed_bench(["attention"], lengths=[length], on_row=show, **common)
    math_rows = run_speed_bench(["attention[impl=math]"], lengths=args.math_lengths, on_row=show, **common)

    ok = True
    print("\nattention (sdpa): direct / bench median (acceptance: within 20%)")
    for row in sdpa_rows:
        key = (row["seq_len"], row["mode"])
        if row["status"] != "ok":
            print(f"  L={key[0]:>6} {key[1]:<7} bench status {row['status']}: {row['error']}")
            ok = False
            continue
        ratio = direct[key] / row["median_s"]
        passed = abs(ratio - 1) <= RATIO_TOLERANCE
        ok &= passed
        print(f"  L={key[0]:>6} {key[1]:<7} direct {direct[key] * 1e3:9.1f} ms  bench {row['median_s'] * 1e3:9.1f} ms"
              f"  ratio {ratio:.3f}  {'ok' if passed else 'FAIL'}")
    low, high = MATH_EXPONENT_RANGE
    print(f"\nscaling exponents of time (acceptance for attention[impl=math]: {low}..{high})")
    judged = 0
    for entry in scaling_table(sdpa_rows + math_rows):
        if entry["metric"] != "time":
            continue
        exponent = entry["exponent"]
        shown = "n/a (fewer than 4 lengths)" if exponent is None else f"{exponent:.3f}"
        verdict = ""
        if entry["label"] == "attention[impl=math]" and exponent is not None:
            # A mode whose long points did not fit in memory has no exponent: reported, not judged.
            passed = low <= exponent <= high
            ok &= passed
            judged += 1
            verdict = "ok" if passed else "FAIL"
        print(f"  {entry['label']:<22} {entry['mode']:<7} over {entry['points']} lengths: {shown}  {verdict}")
    ok &= judged > 0
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
