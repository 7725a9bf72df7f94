"""SeqBoat's cost against its activation ratio: how much of its attention does the router buy back?

SeqBoat (``seqboat``) runs its local attention only on the tokens its router activates, so its cost should fall
with the activation ratio r toward that of its EMA and projections. This script builds one ``seqboat`` layer
(``build("seqboat", d_model, max_len=L)``, default hypers, float32) per target ratio, all with the same weights
except the router's bias: the logit of "activate" is shifted by the (1 - r)-quantile of the logit difference on the
benchmark input, so that a fraction r of its tokens is activated (r = 0 and 1 exactly; the achieved ratio is
measured and reported). Causal ``attention`` (SDPA) and ``mega`` with ``chunk_size=128`` are timed beside them.

Every layer is warmed up, then all are timed in interleaved rounds (``longseq.bench.interleaved``), forward under
``torch.inference_mode()`` and forward+backward (the gradient of the output's sum). Run it on an otherwise idle
machine:

    .venv/bin/python benchmarks/seqboat_activation.py --json benchmarks/results/seqboat-activation-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable

import torch

from longseq.bench.interleaved import time_interleaved
from longseq.bench.isolate import median_and_iqr
from longseq.mixers import build
from longseq.results.provenance import collect_provenance


def with_ratio(layer: torch.nn.Module, x: torch.Tensor, ratio: float) -> tuple[torch.nn.Module, float]:
    """A copy of ``layer`` whose router activates about ``ratio`` of x's tokens, and the ratio it achieves."""
    copy = build("seqboat", layer.d_model, max_len=layer.max_len)
    copy.load_state_dict(layer.state_dict())
    with torch.no_grad():
        m = copy.ema(x)
        logits = copy.hx_proj(m)[..., :2]
        gap = (logits[..., 1] - logits[..., 0]).flatten()  # activated where gap + shift > 0
        if ratio <= 0.0:
            shift = -gap.max().item() - 1.0
        elif ratio >= 1.0:
            shift = -gap.min().item() + 1.0
        else:
            shift = -torch.quantile(gap, 1.0 - ratio).item()
        copy.hx_proj.bias[1] += shift
        copy(x)
    return copy, copy.activation_ratio


def forward_call(layer: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return layer(x)

    return call


def backward_call(layer: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    leaf = x.detach().requires_grad_()

    def call() -> object:
        layer.zero_grad(set_to_none=True)
        layer(leaf).sum().backward()
        return leaf.grad

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--ratios", default="0,0.125,0.25,0.5,0.75,1")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=argparse.FileType("w"), default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lengths = [int(v) for v in args.lengths.split(",")]
    ratios = [float(v) for v in args.ratios.split(",")]
    if any(not 0.0 <= r <= 1.0 for r in ratios) or any(length < 1 for length in lengths):
        parser.error(f"--ratios must lie in [0, 1] and --lengths be >= 1; got {args.ratios!r}, {args.lengths!r}")
    print(f"seqboat vs activation ratio: d_model {args.d_model}, batch 1, float32, {torch.get_num_threads()} "
          f"threads, warmup {args.warmup}, {args.repeats} interleaved rounds")
    rows = []
    for length in lengths:
        torch.manual_seed(0)
        x = torch.randn(1, length, args.d_model)
        base = build("seqboat", args.d_model, max_len=length).eval()
        layers = {f"seqboat r={r:g}": with_ratio(base, x, r) for r in ratios}
        baselines = {"attention": build("attention", args.d_model, max_len=length).eval(),
                     "mega[chunk_size=128]": build("mega", args.d_model, max_len=length, chunk_size=128).eval()}
        achieved = {name: ratio for name, (_, ratio) in layers.items()}
        modules = {**{name: layer for name, (layer, _) in layers.items()}, **baselines}
        for mode, make in (("fwd", forward_call), ("fwdbwd", backward_call)):
            times = time_interleaved({name: make(layer, x) for name, layer in modules.items()},
                                     warmup=args.warmup, repeats=args.repeats)
            medians = {name: median_and_iqr(t)[0] for name, t in times.items()}
            full = medians[f"seqboat r={max(ratios):g}"]
            for name, seconds in medians.items():
                row = {"L": length, "mode": mode, "layer": name, "activation": achieved.get(name),
                       "median_ms": 1e3 * seconds, "vs_max_ratio": seconds / full,
                       "vs_attention": seconds / medians["attention"], "times_s": times[name]}
                rows.append(row)
                shown = "" if row["activation"] is None else f" (activated {row['activation']:.3f})"
                print(f"L={length:6d} {mode:6s} {name:22s}{shown:20s} {row['median_ms']:9.1f} ms  "
                      f"x{row['vs_max_ratio']:.2f} of r={max(ratios):g}, x{row['vs_attention']:.2f} of attention",
                      flush=True)
    if args.json is not None:
        json.dump({"command": shlex.join([sys.executable, *sys.argv]), "threads": torch.get_num_threads(),
                   "cpus": os.cpu_count(), "provenance": collect_provenance(), "rows": rows}, args.json, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
