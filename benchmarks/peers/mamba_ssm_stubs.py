"""Import mamba_ssm's pure-PyTorch references on a machine without its GPU-only dependencies.

mamba_ssm 2.3.2.post1 installs without CUDA (``MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE pip install
--no-build-isolation --no-deps mamba-ssm==2.3.2.post1``: Python files only), but its modules import GPU-only code
at module level, so even the references cannot be imported as they are:
- ``mamba_ssm/__init__.py`` imports every module, including Mamba-2/Mamba-3, which import triton;
- ``ops/selective_scan_interface.py`` (home of ``selective_scan_ref``) imports ``selective_scan_cuda`` (the compiled
  kernel) and ``ops.triton.layer_norm`` (triton);
- ``modules/ssd_minimal.py`` (home of ``ssd_minimal_discrete``) imports ``ops.triton.ssd_combined`` (triton).

``gpu_free_import`` puts stand-ins into ``sys.modules`` for the duration of one import, and only for what cannot be
imported here: a ``mamba_ssm`` package object with the real ``__path__`` (so submodules load from the installed
files but ``__init__.py`` does not run), and modules whose GPU functions raise ``GpuOnly`` when called. The
references never call them. Afterwards every stand-in is removed again, so a later ``import mamba_ssm`` (for
instance transformers probing for kernels) fails as it would without this module, instead of finding stand-ins.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator

# The GPU-only names each stand-in module provides, by module: those the reference modules import by name.
_GPU_ONLY_NAMES: dict[str, tuple[str, ...]] = {
    "selective_scan_cuda": (),
    "mamba_ssm.ops.triton.layer_norm": ("_layer_norm_fwd",),
    "mamba_ssm.ops.triton.ssd_combined": ("mamba_chunk_scan_combined",),
}


class GpuOnly(RuntimeError):
    """A GPU-only mamba_ssm function, stood in for by ``gpu_free_import``, was called."""


def _gpu_only(module: str, name: str) -> Callable[..., None]:
    def call(*args: object, **kwargs: object) -> None:
        raise GpuOnly(f"{module}.{name} needs mamba_ssm's GPU build; benchmarks/peers imported it as a stand-in")

    call.__name__ = name
    return call


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _stand_ins() -> dict[str, types.ModuleType]:
    """The modules to stand in for on this machine (none for those that import for real)."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("mamba_ssm is not installed")
    modules: dict[str, types.ModuleType] = {}
    if "mamba_ssm" not in sys.modules:
        package = types.ModuleType("mamba_ssm", "mamba_ssm without its __init__ (benchmarks/peers stand-in)")
        package.__path__ = list(spec.submodule_search_locations)
        modules["mamba_ssm"] = package
    has_triton = _importable("triton")
    for module, names in _GPU_ONLY_NAMES.items():
        if module in sys.modules or (module == "selective_scan_cuda" and _importable(module)):
            continue
        if module.startswith("mamba_ssm.ops.triton.") and has_triton:
            continue
        stand_in = types.ModuleType(module, "GPU-only mamba_ssm module (benchmarks/peers stand-in)")
        for name in names:
            setattr(stand_in, name, _gpu_only(module, name))
        modules[module] = stand_in
    return modules


@contextlib.contextmanager
def _standing_in(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def gpu_free_import(*names: str) -> list[types.ModuleType]:
    """Import the mamba_ssm submodules ``names`` (e.g. ``"mamba_ssm.modules.ssd_minimal"``) with stand-ins for the
    GPU-only modules they import; return them in order. Raises ImportError when mamba_ssm is not installed."""
    with _standing_in(_stand_ins()):
        return [importlib.import_module(name) for name in names]
