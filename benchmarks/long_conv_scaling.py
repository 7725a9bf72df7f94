"""Do the long-convolution mixers cost what their convolution costs? Forward time of each mixer, of raw
``fft_conv`` at the same width, and of the mixer's own op plus its projections, vs L.

For each of ``longconv``, ``sgconv``, ``hyena``, ``tcn`` and ``ema`` (built as the speed bench builds them:
``build(name, d_model, max_len=longest L)``, default hypers, float32, eval mode) this script times, in ONE process
and under ``torch.inference_mode()``:

- ``mixer``: the mixer's ``forward`` on x: (batch, L, d_model);
- ``fft_conv``: the raw FFT convolution at the same width, u: (batch, d_model, L) with a (d_model, L) kernel;
- ``op+proj``: the mixer's own op with its parameters, plus its projections, without the elementwise glue
  (activations, gates, skips, reshapes):
  - longconv, sgconv: the kernel (``kernel(L)``: regularizers / multi-scale build) + ``fft_conv`` + the output
    Linear(d, 2d);
  - ema: the EMA kernel + ``fft_conv`` (the layer has no projection);
  - hyena: in_proj Linear(d, 3d) + the short depthwise convolution over 3d channels + the implicit filter + the
    order-1 ``fft_conv``s over d channels + out_proj;
  - tcn: the n_layers dilated depthwise ``F.conv1d``s + out_proj.

Every point is warmed up, then the three are timed in interleaved rounds (``longseq.bench.interleaved``). The
scaling exponent is the least-squares slope of log(median time) vs log(L). Acceptance, per mixer: exponent <=
fft_conv's + ``--tolerance`` (0.1), and mixer time <= ``--max-ratio`` (1.5) x op+proj time at every L. Exit
status 1 when a check fails. Run it on an otherwise idle machine:

    .venv/bin/python benchmarks/long_conv_scaling.py --json benchmarks/results/long-conv-scaling-cpu.json
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from longseq.bench.fit import fit_loglog
from longseq.bench.interleaved import parse_scaling_args, scaling_header, scaling_parser, time_interleaved
from longseq.bench.isolate import median_and_iqr
from longseq.mixers import build
from longseq.ops.fft_conv import fft_conv
from longseq.results.provenance import collect_provenance

MIXERS = ("longconv", "sgconv", "hyena", "tcn", "ema")
Call = Callable[[], object]


def op_and_projections(name: str, mixer: torch.nn.Module, x: torch.Tensor) -> Call:
    """The mixer's op and projections at its shapes, with its parameters (see the module docstring)."""
    length, u = x.shape[1], x.mT.contiguous()
    if name in ("longconv", "sgconv", "ema"):
        module = mixer.kernels[0]
        project = (lambda y: y) if name == "ema" else mixer.output[1]
        return lambda: project(fft_conv(u, module.kernel(length), D=mixer.D).mT)
    if name == "hyena":
        conv = mixer.short_conv
        wide = torch.randn(x.shape[0], conv.d, length)

        def hyena() -> object:
            mixer.in_proj(x)
            F.conv1d(wide, conv.weight[:, None], conv.bias, groups=conv.d, padding=conv.kernel_size - 1)
            h = mixer.filters(length)
            for i in range(mixer.order - 1):
                fft_conv(u, h[i, 0], D=mixer.bias[i])
            return mixer.out_proj(x)
        return hyena
    tcn = mixer.tcn

    def dilated_convs() -> object:
        for conv, dilation in zip(tcn.convs, tcn.dilations, strict=True):
            padded = F.pad(u, ((tcn.kernel_size - 1) * dilation, 0))
            F.conv1d(padded, conv.weight, conv.bias, groups=u.shape[1], dilation=dilation)
        return mixer.out_proj(x)
    return dilated_convs


def main(argv: list[str] | None = None) -> int:
    parser = scaling_parser(__doc__.split("\n\n")[0], MIXERS, repeats=7)
    parser.add_argument("--max-ratio", type=float, default=1.5, help="allowed mixer time / (op+proj) time")
    args, mixers, lengths = parse_scaling_args(parser, argv, MIXERS)
    print(scaling_header(args), flush=True)
    results: dict[str, dict] = {}
    ok = True
    with torch.inference_mode():
        for name in mixers:
            torch.manual_seed(0)
            mixer = build(name, args.d_model, max_len=max(lengths)).eval()
            print(f"\n{name}; load average {os.getloadavg()[0]:.2f}", flush=True)
            entry: dict = {"points": []}
            for length in lengths:
                gen = torch.Generator().manual_seed(length)
                x = torch.randn(args.batch, length, args.d_model, generator=gen)
                u = torch.randn(args.batch, args.d_model, length, generator=gen)
                k = torch.randn(args.d_model, length, generator=gen) / length
                calls = {"mixer": functools.partial(mixer, x), "fft_conv": functools.partial(fft_conv, u, k),
                         "op+proj": op_and_projections(name, mixer, x)}
                times = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats)
                point: dict = {"seq_len": length}
                for key, values in times.items():
                    median, spread = median_and_iqr(values)
                    point[key] = {"median_s": median, "iqr_s": spread, "times_s": values}
                point["ratio"] = point["mixer"]["median_s"] / point["op+proj"]["median_s"]
                entry["points"].append(point)
                print(f"  L={length:>6}" + "".join(f"  {key} {point[key]['median_s'] * 1e3:8.1f} ms" for key in calls)
                      + f"  mixer/(op+proj) {point['ratio']:.2f}", flush=True)
                del x, u, k
            for key in ("mixer", "fft_conv", "op+proj"):
                entry[f"{key}_exponent"] = fit_loglog(lengths, [p[key]["median_s"] for p in entry["points"]]).exponent
            entry["difference"] = entry["mixer_exponent"] - entry["fft_conv_exponent"]
            entry["max_ratio"] = max(p["ratio"] for p in entry["points"])
            entry["passed"] = entry["difference"] <= args.tolerance and entry["max_ratio"] <= args.max_ratio
            ok &= entry["passed"]
            results[name] = entry

    header = "".join(f"{'L=' + str(length):>11}" for length in lengths)
    print(f"\nmedian forward ms (float32, batch {args.batch}, d_model {args.d_model})")
    print(f"{'':<22}{header}{'exponent':>10}")
    for name, entry in results.items():
        for key in ("mixer", "op+proj", "fft_conv"):
            label = name if key == "mixer" else f"  {key}"
            cells = "".join(f"{p[key]['median_s'] * 1e3:11.1f}" for p in entry["points"])
            print(f"{label:<22}{cells}{entry[f'{key}_exponent']:10.3f}")
    print(f"\nacceptance: exponent <= fft_conv's + {args.tolerance}; mixer <= {args.max_ratio} x (op+proj) at every L")
    for name, entry in results.items():
        verdict = "ok" if entry["passed"] else "FAILED"
        print(f"  {name:<9} exponent {entry['mixer_exponent']:.3f} - fft_conv {entry['fft_conv_exponent']:.3f} = "
              f"{entry['difference']:+.3f}; worst mixer/(op+proj) {entry['max_ratio']:.2f}  {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": shlex.join(sys.argv), "provenance": collect_provenance(), "lengths": lengths,
                   "d_model": args.d_model, "batch": args.batch, "threads": torch.get_num_threads(),
                   "tolerance": args.tolerance, "max_ratio": args.max_ratio, "mixers": results}
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
