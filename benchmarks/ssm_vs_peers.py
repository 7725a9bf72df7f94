"""Forward tokens/s of 2-layer longseq Mamba / Mamba-2 models against HF transformers' MambaModel / Mamba2Model.

Both sides are the same network, built in this process, float32, eval mode, batch 1, timed under
``torch.inference_mode()``:

- ours: ``longseq.models.Backbone(ModelConfig(layers=KIND, n_layers=2, d_model=256, mlp_ratio=0, norm="rms"))``:
  per layer x + mixer(RMSNorm(x)), no MLP, then a final RMSNorm;
- HF:   ``MambaModel`` / ``Mamba2Model`` with ``num_hidden_layers=2``: per layer x + mixer(RMSNorm(x)) (HF's Mamba
  blocks are mixer + norm only, no MLP), then ``norm_f``; called with ``inputs_embeds`` (the same tensor ours
  gets) and ``use_cache=False`` (no state is returned on either side).

Shapes: (a) Mamba-1, d_model 256, d_state 16, expand 2, d_conv 4, dt rank 16 (both default to ceil(d/16)), at
L = 4096; (b) Mamba-2, d_model 256, expand 2, 8 heads x headdim 64, d_state 64, one group, d_conv 4, at L = 16384.
Chunk sizes are each implementation's default (ours 64, HF 256); HF's Mamba-2 is also timed with
``--hf-mamba2-extra-chunks`` (64 by default, ours) and the acceptance check is against the fastest HF row, so that
a chunk-size choice cannot flatter ours. The parameter counts (embeddings excluded) are printed to show the two
sides have the same weights; on this CPU-only install HF runs its PyTorch fallbacks (Mamba-1: a Python loop over
L, ``use_mambapy=False`` as its config defaults; Mamba-2: the chunked SSD in einsums).

Each pair is warmed up (``--warmup`` calls each), then timed in interleaved rounds (ours, then each HF row, per
round: a change in machine load hits all alike), ``--repeats`` rounds; medians and tokens/s are printed with the
ratio ours/HF in tokens/s. Acceptance: (a) >= 3x, (b) >= 2x. Exit status 1 when a check fails.

    .venv/bin/python benchmarks/ssm_vs_peers.py --json benchmarks/results/ssm-vs-peers-cpu.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from longseq.bench.interleaved import time_interleaved
from longseq.models import Backbone, ModelConfig
from longseq.results.provenance import collect_provenance

ACCEPT = {"mamba": 3.0, "mamba2": 2.0}


def load_hf() -> object:
    try:
        import transformers
    except ImportError as err:
        sys.exit(f"error: transformers is not installed ({err}); pip install -e '.[peers]'")
    return transformers


def ours(kind: str, d_model: int, layers: int, hypers: dict) -> nn.Module:
    config = ModelConfig(vocab_size=1, d_model=d_model, n_layers=layers, layers=kind, mlp_ratio=0, norm="rms",
                         mixer_hypers={kind: hypers})
    return Backbone(config).eval()


def hf_model(kind: str, d_model: int, layers: int, *, d_state: int, expand: int, d_conv: int, headdim: int = 64,
             chunk_size: int | None = None) -> nn.Module:
    tf = load_hf()
    if kind == "mamba":
        config = tf.MambaConfig(hidden_size=d_model, state_size=d_state, expand=expand, conv_kernel=d_conv,
                                num_hidden_layers=layers, vocab_size=16)
        return tf.MambaModel(config).eval()
    extra = {} if chunk_size is None else {"chunk_size": chunk_size}
    config = tf.Mamba2Config(hidden_size=d_model, state_size=d_state, expand=expand, conv_kernel=d_conv,
                             head_dim=headdim, num_heads=expand * d_model // headdim, n_groups=1,
                             num_hidden_layers=layers, vocab_size=16, **extra)
    return tf.Mamba2Model(config).eval()


def layer_params(model: nn.Module) -> int:
    """Parameters outside the token embedding (HF models carry one; ours, a backbone, does not)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embeddings."))


def compare(kind: str, length: int, args: argparse.Namespace) -> dict:
    d, n_layers = args.d_model, args.layers
    if kind == "mamba":
        shape = {"d_state": 16, "expand": 2, "d_conv": 4}
        ours_hypers = dict(shape)
        hf_rows = {"HF MambaModel (default config)": dict(shape)}
    else:
        shape = {"d_state": 64, "expand": 2, "d_conv": 4, "headdim": 64}
        ours_hypers = dict(shape)
        hf_rows = {"HF Mamba2Model (default chunk 256)": dict(shape)}
        for chunk in args.hf_mamba2_extra_chunks:
            hf_rows[f"HF Mamba2Model chunk_size={chunk}"] = {**shape, "chunk_size": chunk}
    torch.manual_seed(0)
    models = {f"longseq {kind} Backbone": ours(kind, d, n_layers, ours_hypers)}
    for label, kw in hf_rows.items():
        torch.manual_seed(0)
        models[label] = hf_model(kind, d, n_layers, **kw)
    x = torch.randn(args.batch, length, d, generator=torch.Generator().manual_seed(1))
    calls: dict[str, Callable[[], object]] = {}
    for label, model in models.items():
        if label.startswith("longseq"):
            calls[label] = lambda m=model: m(x)
        else:
            calls[label] = lambda m=model: m(inputs_embeds=x, use_cache=False).last_hidden_state
    print(f"\n({kind}) {n_layers} layers, d_model {d}, {shape}, L = {length}, batch {args.batch}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for label, model in models.items():
        print(f"  {label:<40} {layer_params(model):>9,} parameters (embeddings excluded)")
    with torch.inference_mode():
        for label, fn in calls.items():
            y = fn()
            if not torch.isfinite(y).all() or tuple(y.shape) != tuple(x.shape):
                raise SystemExit(f"error: {label} gave a non-finite output or shape {tuple(y.shape)}")
        times = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats)
    rows = {}
    for label, values in times.items():
        median = statistics.median(values)
        rows[label] = {"median_s": median, "tokens_per_s": args.batch * length / median, "times_s": values,
                       "parameters": layer_params(models[label])}
    ours_label = next(iter(rows))
    fastest_hf = min((label for label in rows if label != ours_label), key=lambda k: rows[k]["median_s"])
    for label, row in rows.items():
        speedup = rows[ours_label]["tokens_per_s"] / row["tokens_per_s"]
        ratio = "" if label == ours_label else f"  ours/this {speedup:.2f}x"
        print(f"  {label:<40} median {row['median_s'] * 1e3:9.1f} ms  {row['tokens_per_s']:>10,.0f} tokens/s{ratio}")
    ratio = rows[ours_label]["tokens_per_s"] / rows[fastest_hf]["tokens_per_s"]
    passed = ratio >= ACCEPT[kind]
    print(f"  ours vs the fastest HF row ({fastest_hf}): {ratio:.2f}x  (acceptance >= {ACCEPT[kind]:g}x) "
          f"{'ok' if passed else 'FAIL'}", flush=True)
    return {"seq_len": length, "shape": shape, "rows": rows, "fastest_hf": fastest_hf, "ratio": ratio,
            "required": ACCEPT[kind], "passed": passed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mamba-length", type=int, default=4096)
    parser.add_argument("--mamba2-length", type=int, default=16384)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (>= 5)")
    parser.add_argument("--hf-mamba2-extra-chunks", type=lambda s: [int(v) for v in s.split(",") if v],
                        default=[64], help="extra chunk sizes HF's Mamba-2 is timed with ('' for none)")
    parser.add_argument("--only", choices=("mamba", "mamba2"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every time and ratio here")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tf = load_hf()
    print(f"torch {torch.__version__}, transformers {tf.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; float32; inference_mode; {args.warmup} warm-up call(s), {args.repeats} "
          f"interleaved rounds", flush=True)
    results = {}
    for kind, length in (("mamba", args.mamba_length), ("mamba2", args.mamba2_length)):
        if args.only in (None, kind):
            results[kind] = compare(kind, length, args)
    ok = all(r["passed"] for r in results.values())
    print("\nPASS" if ok else "\nFAIL")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"provenance": collect_provenance(command=shlex.join(sys.argv), dtype="float32"),
                  "transformers": importlib.metadata.version("transformers"), "batch": args.batch,
                  "d_model": args.d_model, "layers": args.layers, "warmup": args.warmup, "repeats": args.repeats,
                  "passed": ok, "comparisons": results}
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
