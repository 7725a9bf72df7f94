"""``python -m longseq.kernels``: build (or find in the cache) every compiled kernel now, print which path each runs,
and exit 1 if any could not be built. CI runs it before the tests, whose kernel tests would otherwise skip on a
failed build; a user runs it once after installing to keep the first build out of a benchmark or a training run."""

from __future__ import annotations

import sys
import time

from longseq import kernels


def main() -> int:
    if not kernels.enabled():
        print(f"kernels switched off ({kernels.KERNELS_ENV}=off): nothing to build")
        return 0
    failed = []
    for name in sorted(p.stem for p in kernels.SOURCES.glob("*.cpp")):
        start = time.perf_counter()
        module = kernels.load(name)
        took = time.perf_counter() - start
        print(f"{name}: {'compiled' if module is not None else kernels.kernel_status()[name]} ({took:.1f} s)")
        if module is None:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
