"""Compiled CPU kernels: built on first use with the system's C++ compiler, cached on disk, optional.

``load(name)`` compiles ``csrc/<name>.cpp`` (which may include the shared headers ``csrc/*.h``) through PyTorch's
``torch.utils.cpp_extension`` (OpenMP, -O3) into a cache directory keyed by the hash of the source and the headers,
the torch version, the Python version and the machine, so a build is reused across processes (torch's file lock
serialises concurrent first builds) and rebuilt when any of them changes. When kernels are switched off
(``LONGSEQ_KERNELS=off``), no compiler is present or a build fails,
``load`` returns None: the caller runs its plain PyTorch path, and a single notice per process says why. Which path
runs is recorded with every benchmark row and training run (``kernel_status()``, in the provenance).

Environment: ``LONGSEQ_KERNELS`` = ``auto`` (default: compile when possible) or ``off``; ``LONGSEQ_KERNEL_CACHE``
= the cache root (default ``~/.cache/longseq/kernels``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

KERNELS_ENV = "LONGSEQ_KERNELS"
CACHE_ENV = "LONGSEQ_KERNEL_CACHE"
SOURCES = Path(__file__).parent / "csrc"
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]  # no FMA contraction: results match the
# reference's rounding more closely and do not depend on the compiler's choice

_notices: dict[str, str] = {}  # kernel name -> why it is not compiled (each said once)
_loaded: dict[str, str] = {}  # kernel name -> "compiled"


def enabled() -> bool:
    """Whether compiled kernels may be used (``LONGSEQ_KERNELS`` is not ``off``). Read on every call (a test or a
    benchmark switches it within a process), parsed once per value: decoding asks once per token."""
    return _parse_switch(os.environ.get(KERNELS_ENV, "auto"))


@functools.lru_cache(maxsize=8)
def _parse_switch(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("auto", "off", "on"):
        raise ValueError(f"{KERNELS_ENV}={value!r}: allowed: auto, on (the same), off")
    return value != "off"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "longseq" / "kernels"))


def load(name: str) -> ModuleType | None:
    """The compiled extension ``csrc/<name>.cpp``, or None (kernels off, no compiler, a failed build: see
    ``kernel_status``). Built once per process and cached on disk across processes."""
    if not enabled():
        return None
    return _build(name)


@functools.cache
def _build(name: str) -> ModuleType | None:
    source = SOURCES / f"{name}.cpp"
    if not source.is_file():
        raise ValueError(f"kernel {name!r}: no source {source}; available: "
                         f"{', '.join(sorted(p.stem for p in SOURCES.glob('*.cpp')))}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return _fallback(name, f"no C++ compiler ({compiler!r} not found on PATH)")
    headers = [h.read_bytes() for h in sorted(SOURCES.glob("*.h"))]  # shared by the sources: part of each build
    key = hashlib.sha256(b"\0".join([source.read_bytes(), *headers, " ".join(_CFLAGS).encode(),
                                     torch.__version__.encode(), sys.version.encode(), platform.machine().encode(),
                                     _cpu_flags()]))
    directory = cache_root() / f"{name}-{key.hexdigest()[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    try:
        from torch.utils import cpp_extension

        module = cpp_extension.load(name=f"longseq_{name}", sources=[str(source)], extra_cflags=_CFLAGS,
                                    extra_ldflags=["-fopenmp"], build_directory=str(directory), verbose=False)
    except Exception as error:  # a compiler error, a missing header, a linker failure: all mean "fall back"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return _fallback(name, f"its build failed ({first_line}); build log in {directory}")
    _loaded[name] = "compiled"
    return module


def _fallback(name: str, reason: str) -> None:
    _notices[name] = reason
    warnings.warn(f"longseq: compiled kernel {name!r} unavailable: {reason}. Running the plain PyTorch path "
                  f"(set {KERNELS_ENV}=off to silence this).", RuntimeWarning, stacklevel=3)
    return None


def _cpu_flags() -> bytes:
    """The CPU's feature flags (a build with -march=native runs only where they are the same)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return line.encode()
    return platform.processor().encode()


def kernel_status() -> dict[str, str]:
    """Which path each kernel (every source in ``csrc/``) runs in this process, without building anything: name ->
    ``"compiled"`` (loaded), ``"compiled on first use"`` (enabled, a compiler present: ``load`` builds or reuses it
    when the op first runs), or ``"pytorch: <why>"`` (no compiler, a failed build); ``{"all": "pytorch:
    LONGSEQ_KERNELS=off"}`` when switched off. Recorded in every result's provenance, so it must stay cheap: a first
    build takes minutes and belongs to the op that needs it."""
    if not enabled():
        return {"all": f"pytorch: {KERNELS_ENV}=off"}
    compiler = os.environ.get("CXX", "c++")
    unused = "compiled on first use" if shutil.which(compiler) else f"pytorch: no C++ compiler ({compiler!r} not found)"
    status = {source.stem: unused for source in sorted(SOURCES.glob("*.cpp"))}
    return {**status, **{name: f"pytorch: {why}" for name, why in _notices.items()}, **_loaded}
