"""A forward pass over a million tokens: time and peak resident memory of ``mamba``, ``mamba2``, ``s4d``, ``hyena``.

Each mixer runs in its own child process (this script with ``--child NAME``), so that its peak memory is its
own: the child builds the mixer (``build(name, d_model)``, default hypers, float32, eval), draws x: (1, L, d_model),
warms up on the first ``--warmup-len`` tokens, then records its resident memory (VmRSS) and runs ONE forward pass
over all L tokens under ``torch.inference_mode()``, writing the outputs into a preallocated y: (1, L, d_model).
Peak memory is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the pass minus the VmRSS just before it: what
the pass adds on top of the process, its model, x and y (the high-water mark before the pass is printed too; it
must not exceed the pre-pass RSS by much, or the figure would be an underestimate).

How a mixer covers the sequence (``--stream``): mixers named there stream it with ``forward_stream`` in chunks of
``--chunk`` tokens (the state carries across chunks: the same function as one ``forward``, contract-tested), the
others run ``forward`` in one call. Defaults: mamba and mamba2 stream in chunks of 65,536 (a one-call pass would
hold every projection, dt and B/C tensor of the whole sequence at once); s4d and hyena run ``forward`` in one go
(one FFT of size 2L per channel). Every mixer is built with ``max_len`` = L (hyena's implicit filter is bound
to it).

    .venv/bin/python benchmarks/million_tokens.py                    # L = 2^20, d_model 64, batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

MIXERS = ("mamba", "mamba2", "s4d", "hyena")
GIB = 1 << 30
MIB = 1 << 20


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(name: str, args: argparse.Namespace) -> dict:
    """One mixer's pass, in this (child) process; returns the figures as a dict."""
    import torch

    from longseq.mixers import build

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Built for this length, as the speed bench does (hyena's implicit filter is bound to it).
    mixer = build(name, args.d_model, max_len=args.length).eval()
    length, streamed = args.length, name in args.stream
    x = torch.randn(1, length, args.d_model)
    y = torch.empty_like(x)
    with torch.inference_mode():
        warm = x[:, : args.warmup_len]
        if streamed:
            mixer.forward_stream(warm, mixer.init_state(1))
        else:
            mixer(warm)
        del warm
        rss_before, hwm_before = rss_bytes(), max_rss_bytes()
        t0 = time.perf_counter()
        if streamed:
            state = mixer.init_state(1)
            for start in range(0, length, args.chunk):
                out, state = mixer.forward_stream(x[:, start: start + args.chunk], state)
                y[:, start: start + out.shape[1]] = out
                del out
        else:
            y.copy_(mixer(x))
        seconds = time.perf_counter() - t0
        hwm_after = max_rss_bytes()
        finite = bool(torch.isfinite(y).all())
    return {
        "mixer": name, "hypers": {k: getattr(mixer, k) for k in ("d_state", "expand") if hasattr(mixer, k)},
        "how": f"forward_stream, chunks of {args.chunk}" if streamed else "forward, one call",
        "seq_len": length, "d_model": args.d_model, "threads": torch.get_num_threads(), "seconds": seconds,
        "tokens_per_s": length / seconds, "rss_before_bytes": rss_before, "maxrss_before_bytes": hwm_before,
        "maxrss_after_bytes": hwm_after, "peak_bytes": hwm_after - rss_before, "finite": finite,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", default=",".join(MIXERS))
    parser.add_argument("--length", type=int, default=1 << 20)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--stream", default="mamba,mamba2", help="mixers streamed with forward_stream")
    parser.add_argument("--chunk", type=int, default=65536, help="tokens per forward_stream call")
    parser.add_argument("--warmup-len", type=int, default=4096, help="tokens of the warm-up pass")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the children")
    parser.add_argument("--budget-gib", type=float, default=24.0, help="acceptance: peak memory of each pass")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.stream = {s.strip() for s in args.stream.split(",") if s.strip()}
    if args.child is not None:
        print(json.dumps(child(args.child, args)))
        return 0

    mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    forwarded = ["--length", str(args.length), "--d-model", str(args.d_model), "--stream", ",".join(args.stream),
                 "--chunk", str(args.chunk), "--warmup-len", str(args.warmup_len)]
    if args.threads is not None:
        forwarded += ["--threads", str(args.threads)]
    print(f"L = {args.length:,} tokens, batch 1, d_model {args.d_model}, float32, inference_mode; each mixer in "
          f"its own process; load average {os.getloadavg()[0]:.2f}", flush=True)
    results, ok = [], True
    for name in mixers:
        done = subprocess.run([sys.executable, __file__, *forwarded, "--child", name], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            print(f"  {name}: the child failed (exit {done.returncode}):\n{done.stderr[-3000:]}", flush=True)
            results.append({"mixer": name, "error": done.stderr[-3000:], "returncode": done.returncode})
            ok = False
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["passed"] = r["finite"] and r["peak_bytes"] <= args.budget_gib * GIB
        ok &= r["passed"]
        results.append(r)
        print(f"  {name:<7} {r['how']:<34} {r['seconds']:8.1f} s  {r['tokens_per_s']:>9,.0f} tokens/s  "
              f"peak +{r['peak_bytes'] / MIB:8,.0f} MiB over {r['rss_before_bytes'] / MIB:,.0f} MiB before "
              f"(high-water mark before the pass {r['maxrss_before_bytes'] / MIB:,.0f} MiB)  "
              f"{'finite' if r['finite'] else 'NON-FINITE'}  {'ok' if r['passed'] else 'FAIL'}", flush=True)
    print(f"\n{'PASS' if ok else 'FAIL'} (acceptance: every pass finite, peak <= {args.budget_gib:g} GiB)")
    if args.json is not None:
        from longseq.results.provenance import collect_provenance

        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"provenance": collect_provenance(command=shlex.join(sys.argv), dtype="float32"),
                  "passed": ok, "results": results}
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
