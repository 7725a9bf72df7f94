"""Provenance of a result: which code, which software, which machine, which command produced it."""

from __future__ import annotations

import platform
import shlex
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

# git runs on every recorded result; a hung git (network filesystem, lock) must not stall a benchmark.
_GIT_TIMEOUT_S = 5.0


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds, e.g. ``2026-01-02T03:04:05.000006+00:00``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _git(args: list[str], cwd: Path) -> str | None:
    """stdout of ``git <args>`` run in ``cwd``, or None when git is missing, slow, or fails there."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD sha, dirty flag) of the repository holding this package, else of the current directory.

    Dirty means tracked files differ from HEAD; untracked files do not count. (None, None) outside git.
    """
    package_dir = Path(__file__).resolve().parent
    for where in (package_dir, Path.cwd()):
        head = _git(["rev-parse", "HEAD"], where)
        if head is None:
            continue
        status = _git(["status", "--porcelain", "--untracked-files=no"], where)
        dirty = None if status is None else bool(status.strip())
        return head.strip(), dirty
    return None, None


def cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo, else ``platform.processor()``, else None."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or None


def collect_provenance(command: str | None = None, dtype: str | None = None) -> dict:
    """Everything needed to tell where a result came from; stored beside every result row.

    ``command`` defaults to the exact command line of this process; ``dtype`` is the compute dtype of the
    measured computation (e.g. ``"float32"``), None when it does not apply.
    """
    # torch is imported here, not at module level, so that reading a results store does not pay for it.
    import torch

    from longseq.kernels import kernel_status

    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "gpu_model": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "kernels": kernel_status(),
        "dtype": dtype,
        "command": command if command is not None else shlex.join(sys.argv),
        "hostname": socket.gethostname(),
        "timestamp": utc_now_iso(),
    }
