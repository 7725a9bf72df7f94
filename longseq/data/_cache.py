"""Per-process memory cache of decoded data files, keyed on the file, so a task built twice decodes once.

The key is the resolved path with the file's size and modification time: a file rewritten in place (a reinstall,
a test writing a new file at a reused path) is decoded again instead of served stale.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def cached_by_file(maxsize: int = 64) -> Callable[[Callable[[Path], T]], Callable[[str | os.PathLike], T]]:
    """Decorator for a loader ``fn(path) -> value`` of one file: memoise on (path, size, mtime)."""

    def decorate(fn: Callable[[Path], T]) -> Callable[[str | os.PathLike], T]:
        @functools.lru_cache(maxsize=maxsize)
        def keyed(path: str, size: int, mtime_ns: int) -> T:
            return fn(Path(path))

        @functools.wraps(fn)
        def wrapper(path: str | os.PathLike) -> T:
            resolved = Path(path).resolve()
            stat = resolved.stat()
            return keyed(str(resolved), stat.st_size, stat.st_mtime_ns)

        wrapper.cache_clear = keyed.cache_clear  # type: ignore[attr-defined]
        return wrapper

    return decorate
