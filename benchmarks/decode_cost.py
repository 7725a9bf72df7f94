"""Per-token decode cost of `attention.step` vs the attention over the cache alone, at growing context lengths.

If the cache were copied per token (``torch.cat`` of K and V, as a naive cache does), every step would pay the
"copy" column on top; with FullCache the step costs the projections plus the attention over the cache.
Usage: python benchmarks/decode_cost.py [--d-model 256] [--contexts 1024,4096,16384] [--tokens 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from longseq.mixers import build


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--contexts", default="1024,4096,16384")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--preallocate", action="store_true", help="init_state(max_len=...) instead of growing")
    args = ap.parse_args()
    torch.manual_seed(0)
    m = build("attention", args.d_model).eval()
    print(f"threads={torch.get_num_threads()} d_model={args.d_model} heads={m.n_heads} "
          f"cache={'preallocated' if args.preallocate else 'growing'}")
    print(f"{'context':>8} {'step ms':>9} {'attn-only ms':>13} {'overhead ms':>12} {'copy ms':>9}")
    with torch.no_grad():
        for ctx in map(int, args.contexts.split(",")):
            state = m.init_state(1, max_len=ctx + args.tokens + 1 if args.preallocate else None)
            _, state = m.forward_stream(torch.randn(1, ctx, args.d_model), state)
            x = torch.randn(1, args.d_model)
            step_ms = median_ms(lambda: m.step(x, state), args.tokens)  # noqa: B023
            q = torch.randn(1, m.n_heads, 1, m.head_dim)
            k, v = state.cache.keys(), state.cache.values()
            attn_ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v), args.tokens)  # noqa: B023
            k_new = torch.randn(1, m.n_heads, 1, m.head_dim)
            copy_ms = median_ms(lambda: (torch.cat([k, k_new], dim=2), torch.cat([v, k_new], dim=2)),  # noqa: B023
                                args.tokens)
            print(f"{ctx:>8} {step_ms:>9.3f} {attn_ms:>13.3f} {step_ms - attn_ms:>12.3f} {copy_ms:>9.3f}")


if __name__ == "__main__":
    main()
