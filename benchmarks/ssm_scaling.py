"""Does each state-space mixer scale like the op it is built on? Forward time of the mixer and of its raw op, vs L.

For each of ``mamba``, ``mamba2``, ``s4d`` and ``s4`` (built as the speed bench builds them: ``build(name,
d_model)`` with its default hypers, float32, eval mode) this script times, in ONE process and under
``torch.inference_mode()``:

- the mixer's ``forward`` on x: (batch, L, d_model);
- the raw op the mixer is built on, at the mixer's own shapes and with the mixer's own parameter values:
  - mamba:  ``selective_scan`` over (batch, d_inner = expand·d_model, L) channels with N = d_state, plus the D skip,
    the z gate and the last state, as ``MambaPass.forward`` calls it (chunk_size as the mixer's);
  - mamba2: ``ssd_chunked`` with H = d_inner / headdim heads of P = headdim, one group of N = d_state, the mixer's
    chunk size, D skip and final states, as ``Mamba2Pass.forward`` calls it;
  - s4d:    ``s4d_kernel(dt, A, C, L)`` then ``fft_conv`` over d_model channels (with the D skip);
  - s4:     ``s4_kernel(dt, Λ, P, B, C, L)`` then ``fft_conv``.

Every (mixer, L) point is warmed up (``--warmup`` calls of each), then the mixer and its op are timed in
interleaved rounds (one call each per round, so that a change in machine load hits both alike), ``--repeats``
rounds; the medians are printed with the interquartile ranges. The scaling exponent is the least-squares slope of
log(median time) vs log(L) over all lengths (the speed bench's definition), for the mixer and for its op; the
acceptance check is mixer exponent <= op exponent + ``--tolerance`` (0.1): the layer around the op (projections,
short convolution, gating, norms) must not add a worse-than-op growth. Exit status 1 when a check fails.

Run it on an otherwise idle machine (the 1-minute load average is printed before each mixer):

    .venv/bin/python benchmarks/ssm_scaling.py --json benchmarks/results/ssm-scaling-cpu.json
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from collections.abc import Callable

import torch

from longseq.bench.fit import fit_loglog
from longseq.bench.interleaved import parse_scaling_args, scaling_header, scaling_parser, time_interleaved
from longseq.bench.isolate import median_and_iqr
from longseq.mixers import build
from longseq.ops.fft_conv import fft_conv
from longseq.ops.selective_scan import selective_scan
from longseq.ops.ssd import ssd_chunked
from longseq.ops.ssm_kernel import s4_kernel, s4d_kernel
from longseq.results.provenance import collect_provenance

MIXERS = ("mamba", "mamba2", "s4d", "s4")
OP_NAMES = {
    "mamba": "selective_scan",
    "mamba2": "ssd_chunked",
    "s4d": "s4d_kernel + fft_conv",
    "s4": "s4_kernel + fft_conv",
}

Call = Callable[[], object]


def op_call(name: str, mixer: torch.nn.Module, batch: int, length: int, gen: torch.Generator) -> tuple[Call, str]:
    """The raw op under ``name``'s mixer, at its shapes and with its parameters, on random inputs of ``length``;
    returns the call and a description of the shapes."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    if name == "mamba":
        p = mixer.passes[0]
        e, n = p.d_inner, p.d_state
        u, z = randn(batch, e, length), randn(batch, e, length)
        # delta as the mixer forms it: softplus(dt_proj(.)), here softplus of noise around dt_proj's bias.
        delta = torch.nn.functional.softplus(0.1 * randn(batch, e, length) + p.dt_proj.bias.detach()[:, None])
        b, c = randn(batch, n, length), randn(batch, n, length)
        a, d = -p.A_log.detach().exp(), p.D.detach()
        h0 = torch.zeros(batch, e, n)
        chunk = p.scan.keywords["chunk_size"]

        def scan() -> object:
            return selective_scan(u, delta, a, b, c, D=d, z=z, initial_state=h0, return_last_state=True,
                                  chunk_size=chunk)
        return scan, f"u (B={batch}, D={e}, L), N={n}, chunk {chunk}"
    if name == "mamba2":
        p = mixer.passes[0]
        h, hd, g, n = p.nheads, p.headdim, p.ngroups, p.d_state
        x = randn(batch, length, h, hd)
        dt = torch.nn.functional.softplus(0.1 * randn(batch, length, h) + p.dt_bias.detach())
        b, c = randn(batch, length, g, n), randn(batch, length, g, n)
        a, d = -p.A_log.detach().exp(), p.D.detach()
        s0 = torch.zeros(batch, h, hd, n)
        chunk = p.scan.keywords["chunk_size"]

        def ssd() -> object:
            return ssd_chunked(x, dt, a, b, c, chunk, D=d, initial_states=s0, return_final_states=True)
        return ssd, f"x (B={batch}, L, H={h}, P={hd}), G={g}, N={n}, chunk {chunk}"
    ssm = mixer.kernels[0]
    u = randn(batch, mixer.d_model, length)
    d = mixer.D.detach()
    if name == "s4d":
        dt, a, c = (t.detach() for t in ssm._params())

        def s4d() -> object:
            return fft_conv(u, s4d_kernel(dt, a, c, length, discretization=ssm.discretization), D=d)
        return s4d, f"u (B={batch}, H={mixer.d_model}, L), {a.shape[1]} complex modes (N={mixer.d_state})"
    dt, lam, p_, b, c = (t.detach() for t in ssm._params())

    def s4() -> object:
        return fft_conv(u, s4_kernel(dt, lam, p_, b, c, length), D=d)
    return s4, f"u (B={batch}, H={mixer.d_model}, L), {lam.shape[1]} complex modes (N={mixer.d_state})"


def main(argv: list[str] | None = None) -> int:
    parser = scaling_parser(__doc__.split("\n\n")[0], MIXERS, repeats=5)
    args, mixers, lengths = parse_scaling_args(parser, argv, MIXERS)
    print(scaling_header(args), flush=True)
    results: dict[str, dict] = {}
    ok = True
    with torch.inference_mode():
        for name in mixers:
            torch.manual_seed(0)
            mixer = build(name, args.d_model).eval()
            hypers = {k: getattr(mixer, k) for k in ("d_state", "expand", "d_conv") if hasattr(mixer, k)}
            if name == "mamba2":
                hypers["headdim"] = mixer.passes[0].headdim
            print(f"\n{name} {hypers} vs {OP_NAMES[name]}; load average {os.getloadavg()[0]:.2f}", flush=True)
            entry: dict = {"op": OP_NAMES[name], "hypers": hypers, "points": []}
            for length in lengths:
                gen = torch.Generator().manual_seed(length)
                x = torch.randn(args.batch, length, args.d_model, generator=gen)
                op, shapes = op_call(name, mixer, args.batch, length, gen)
                calls = {"mixer": functools.partial(mixer, x), "op": op}
                times = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats)
                point = {"seq_len": length, "op_shapes": shapes}
                for key, values in times.items():
                    median, spread = median_and_iqr(values)
                    point[key] = {"median_s": median, "iqr_s": spread, "times_s": values}
                entry["points"].append(point)
                mix, opm = point["mixer"]["median_s"], point["op"]["median_s"]
                print(f"  L={length:>6}  mixer {mix * 1e3:9.1f} ms (IQR {point['mixer']['iqr_s'] * 1e3:6.1f})"
                      f"  op {opm * 1e3:9.1f} ms (IQR {point['op']['iqr_s'] * 1e3:6.1f})  op/mixer {opm / mix:.2f}"
                      f"   [{shapes}]", flush=True)
                del x, op
            for key in ("mixer", "op"):
                fit = fit_loglog(lengths, [p[key]["median_s"] for p in entry["points"]])
                entry[f"{key}_exponent"] = fit.exponent
            entry["difference"] = entry["mixer_exponent"] - entry["op_exponent"]
            entry["passed"] = entry["difference"] <= args.tolerance
            ok &= entry["passed"]
            results[name] = entry

    header = "".join(f"{'L=' + str(length):>12}" for length in lengths)
    print(f"\nmedian forward ms (float32, batch {args.batch}, d_model {args.d_model})")
    print(f"{'':<32}{header}{'exponent':>10}")
    for name, entry in results.items():
        for key, label in (("mixer", name), ("op", f"  {entry['op']}")):
            cells = "".join(f"{p[key]['median_s'] * 1e3:12.1f}" for p in entry["points"])
            print(f"{label:<32}{cells}{entry[f'{key}_exponent']:10.3f}")
    print(f"\nscaling exponents over L = {lengths} (acceptance: mixer <= op + {args.tolerance})")
    for name, entry in results.items():
        print(f"  {name:<7} mixer {entry['mixer_exponent']:.3f}  {entry['op']:<22} {entry['op_exponent']:.3f}  "
              f"difference {entry['difference']:+.3f}  {'ok' if entry['passed'] else 'FAIL'}")
    print("\nPASS" if ok else "\nFAIL")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "provenance": collect_provenance(command=shlex.join(sys.argv), dtype="float32"),
            "dtype": "float32", "batch": args.batch, "d_model": args.d_model, "lengths": lengths,
            "warmup": args.warmup, "repeats": args.repeats, "tolerance": args.tolerance, "passed": ok,
            "mixers": results,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
