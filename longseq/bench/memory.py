"""Peak memory of a code region: resident memory on CPU (Linux /proc), allocator statistics on CUDA.

CPU: the kernel's resident-set high-water mark (VmHWM) is reset to the current resident size by writing "5" to
``/proc/self/clear_refs``; the region's peak is VmHWM after it minus VmRSS before it. Where clear_refs is not
writable (some containers), a thread samples VmRSS instead and the result carries a note saying so.
CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated before.

Use::

    with track_peak_memory("cpu") as mem:
        run()
    mem.peak_bytes, mem.note
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
# "5" resets the peak resident set size (VmHWM) to the current one (proc(5), Linux >= 4.0).
_RESET_HWM = "5"
SAMPLE_INTERVAL_S = 0.001


@dataclasses.dataclass
class PeakMemory:
    """What ``track_peak_memory`` measured; filled in when the ``with`` block exits.

    peak_bytes: peak during the region minus the level just before it (None where nothing can be measured).
    baseline_bytes: resident (CPU) or allocated (CUDA) bytes just before the region.
    method: "clear_refs", "sampling", "cuda" or "unavailable". note: a caveat about the measurement, else None.
    """

    peak_bytes: int | None = None
    baseline_bytes: int | None = None
    method: str = "unavailable"
    note: str | None = None


def read_status(pid: int | str = "self") -> dict[str, int]:
    """The memory fields (``Vm*``, ``Rss*``) of /proc/<pid>/status, in bytes. Raises OSError where there is none
    (the process is gone, or not Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key.startswith(("Vm", "Rss")) and len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of a process in bytes; None when it cannot be read (gone, or no /proc)."""
    try:
        return read_status(pid).get("VmRSS")
    except OSError:
        return None


def total_ram_bytes() -> int:
    """Physical memory of the machine."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux: ask sysconf below
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgt]?)(?P<binary>i?)b?\s*$", re.IGNORECASE)
_UNIT_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str | int) -> int:
    """Bytes from ``"8GiB"``, ``"512MiB"``, ``"1.5G"`` (binary units, as RAM is sold), ``"2GB"`` (decimal) or a plain
    number of bytes; for command-line options such as ``--max-memory``."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"size={text!r} is not a size; expected e.g. 8GiB, 512MiB, 1.5G, 2GB or a number of bytes")
    unit = match.group("unit").lower()
    # "G" and "GiB" are binary; "GB" with an explicit B and no i is decimal.
    decimal = bool(unit) and not match.group("binary") and str(text).strip().lower().endswith("b")
    base = 1000 if decimal else 1024
    return int(float(match.group("number")) * base ** _UNIT_POWER[unit])


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the kernel (glibc ``malloc_trim``), so that memory freed
    by an earlier region neither counts in the next baseline nor hides reuse in the next peak."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _reset_high_water_mark() -> str | None:
    """Reset VmHWM; return None on success, else why it could not be done."""
    try:
        _CLEAR_REFS.write_text(_RESET_HWM)
    except OSError as err:
        return f"{_CLEAR_REFS} is not writable ({err.strerror or err})"
    return None


class _RssSampler(threading.Thread):
    """Polls this process's VmRSS until stopped and keeps the maximum (fallback when VmHWM cannot be reset)."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval_s = interval_s
        self.peak = rss_bytes() or 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes() or 0)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_bytes() or 0)


def format_bytes(n: float) -> str:
    """``1.50 GiB`` / ``512.0 MiB``: how memory figures are shown in rows and messages."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def current_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory in use now: the CUDA allocator's allocated bytes, or this process's resident memory after handing
    free heap pages back (None without /proc)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    release_free_memory()
    return rss_bytes()


@contextmanager
def track_peak_memory(device: torch.device | str = "cpu", *,
                      sample_interval_s: float = SAMPLE_INTERVAL_S) -> Iterator[PeakMemory]:
    """Measure the peak memory of the ``with`` block above the level just before it (see the module docstring).

    The result is complete after the block exits, also when the block raises.
    """
    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        yield from _track_cuda(device, result)
    else:
        yield from _track_cpu(result, sample_interval_s)


def _track_cuda(device: torch.device, result: PeakMemory) -> Iterator[PeakMemory]:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    result.baseline_bytes = torch.cuda.memory_allocated(device)
    result.method = "cuda"
    try:
        yield result
    finally:
        torch.cuda.synchronize(device)
        result.peak_bytes = max(0, torch.cuda.max_memory_allocated(device) - result.baseline_bytes)


def _track_cpu(result: PeakMemory, sample_interval_s: float) -> Iterator[PeakMemory]:
    release_free_memory()
    before = rss_bytes()
    if before is None:
        result.note = "no /proc/self/status: peak memory not measured"
        yield result
        return
    result.baseline_bytes = before
    why_not = _reset_high_water_mark()
    sampler = None
    if why_not is None:
        result.method = "clear_refs"
    else:
        result.method = "sampling"
        result.note = (f"memory sampled from VmRSS every {sample_interval_s * 1e3:g} ms because {why_not}; "
                       f"short peaks may be missed")
        sampler = _RssSampler(sample_interval_s)
        sampler.start()
    try:
        yield result
    finally:
        peak = sampler.stop() if sampler is not None else read_status().get("VmHWM", 0)
        result.peak_bytes = max(0, peak - before)
