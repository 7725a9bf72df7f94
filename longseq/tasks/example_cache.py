"""A disk cache of generated examples: a pure accelerator for a task whose example ``i`` of a split is a pure function
of (generator config, seed, split, i) returning ``(tokens, label)`` (Path-X costs ~150 ms an image to generate).

A cached batch is exactly the batch the generator returns, so data fingerprints and run keys do not depend on the
cache. An *entry* holds examples ``0 .. count-1`` of one (family, config, seed, split) in a folder
``<root>/<family>/<label>-seed<seed>-<split>-<hash>/`` (``EntrySpec.directory``):

- ``tokens.npy``: uint8 ``(rows, row_length)``, example i's tokens in row i; ``labels.npy``: int64 ``(rows,)``;
- ``manifest.json``, the commit record: the fingerprint (a hash of family, config, seed, split and the generator
  version), the generator version, config, seed, split, ``count``, ``row_length``, the SHA-256 of the first
  ``count`` rows of each array, and the longseq version. Only those ``count`` rows are ever read (``rows >= count``
  while a build is under way or after one was killed).

The root is ``$LONGSEQ_CACHE_DIR`` or ``~/.cache/longseq`` (where the compiled kernels keep ``kernels/``).

**Building** (``build_entry``) appends and never rewrites a committed row. Examples are generated in order (in
worker processes, a bounded number of tasks in flight), appended to the arrays' ends, and committed every
``COMMIT_EVERY`` examples and at the end: the data fsynced, each ``.npy`` header's row count rewritten in place
(numpy's header reserves room for a growing first axis), then the manifest written to a temporary file and renamed
over the old one. The rename is the commit: a killed build leaves the previous manifest, whose count and hashes
cover rows written before it; the next build cuts the rows past it off and resumes there, so ``count`` only grows.
An entry of another generator version, or ``rebuild=True``, starts over from an empty entry. One build per entry at
a time (a lock file).

**Reading** (``cached_batch``): the first use of an entry in a process (and again when its manifest is replaced)
opens and verifies it: an entry of another generator version is ignored with a one-line notice (a
``RuntimeWarning``) and the examples are generated; otherwise the manifest must match the spec (fingerprint,
config, seed, split, row length), the arrays their dtype, row length and count, the SHA-256 of their first ``count``
rows the manifest's, and the last cached example what the generator produces now. Any mismatch is an
``ExampleCacheError`` naming the entry and how to delete or rebuild it; a silently wrong cache would corrupt a
benchmark. After that a batch is a fancy index of the memory-mapped arrays for the indices below ``count`` (one
``stat`` of the manifest per batch, no JSON) and the generator for the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from longseq import __version__

CACHE_ENV = "LONGSEQ_CACHE_DIR"
MANIFEST = "manifest.json"
ARRAYS: dict[str, np.dtype] = {"tokens": np.dtype(np.uint8), "labels": np.dtype("<i8")}
"""The array files of an entry (``<name>.npy``) and their dtypes."""
COMMIT_EVERY = 1024
"""Examples appended between two commits of a build (what a killed build can lose)."""
TASK_EXAMPLES = 8
"""Examples per task handed to a worker process."""
_HASH_BYTES = 64 << 20  # hashed this much at a time, so verifying a multi-GB entry does not read it into memory

Example = tuple[np.ndarray, int]


class ExampleCacheError(ValueError):
    """A cache entry that cannot be used as it stands: corrupt, tampered with, or being built by another process."""


def cache_root() -> Path:
    """``$LONGSEQ_CACHE_DIR`` when set and non-empty, else ``~/.cache/longseq``."""
    override = os.environ.get(CACHE_ENV, "").strip()
    return Path(override).expanduser() if override else Path.home() / ".cache" / "longseq"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class EntrySpec:
    """What one entry holds: examples ``0, 1, ...`` of ``split`` for one generator config and seed.

    family: the root's sub-folder ("pathfinder"); label: the readable start of the folder name ("128px-hard");
    config: every generator parameter, JSON-able; version: the generator version (bumped when its output changes);
    row_length: tokens per example; generate: index -> ``(tokens: (row_length,) in [0, 256), label)``, a pure
    function of the index, picklable (it runs in worker processes); command: the command that builds this entry,
    without ``--count``, for messages.
    """

    family: str
    label: str
    config: Mapping[str, Any]
    seed: int
    split: str
    version: int
    row_length: int
    generate: Callable[[int], Example]
    command: str

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """What the data depend on besides the generator's code: family, config (as JSON reads it), seed, split."""
        config = json.loads(json.dumps(dict(self.config)))
        return {"family": self.family, "config": config, "seed": self.seed, "split": self.split}

    @functools.cached_property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the identity and the generator version."""
        return _digest({**self.identity, "version": self.version})[:16]

    @functools.cached_property
    def folder(self) -> str:
        """The entry's folder name: readable, then a hash of the identity. Not of the version, so that an entry of
        another version is found and reported rather than silently left beside a new one."""
        return f"{self.label}-seed{self.seed}-{self.split}-{_digest(self.identity)[:12]}"

    def directory(self, root: Path | None = None) -> Path:
        """The entry's folder under ``root`` (default ``cache_root()``)."""
        return (cache_root() if root is None else root) / self.family / self.folder


@dataclasses.dataclass(frozen=True)
class CachedExamples:
    """A verified entry: ``tokens: (count, row_length) uint8`` and ``labels: (count,) int64``, memory-mapped."""

    path: Path
    count: int
    tokens: np.ndarray
    labels: np.ndarray


# ----------------------------------------------------------------------------------------------------------
# Reading

_opened: dict[Path, tuple[tuple[int, int, int], CachedExamples | None]] = {}
"""Entry folder -> (its manifest's inode, mtime and size when opened, the verified entry or None: another version)."""


def open_entry(spec: EntrySpec, root: Path | None = None) -> CachedExamples | None:
    """``spec``'s entry, verified on its first use in this process (module docstring); None when there is none or
    it is of another generator version (then with a notice, once)."""
    directory = spec.directory(root)
    try:
        stat = (directory / MANIFEST).stat()
    except FileNotFoundError:
        return None
    signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    known = _opened.get(directory)
    if known is not None and known[0] == signature:
        return known[1]
    manifest = _read_manifest(spec, directory)
    entry = None
    if _same_version(spec, directory, manifest, "ignored, the examples are generated"):
        arrays, _ = _verify(spec, directory, manifest)
        entry = CachedExamples(directory, manifest["count"], arrays["tokens"], arrays["labels"])
    _opened[directory] = (signature, entry)
    return entry


def cached_batch(
    spec: EntrySpec, indices: np.ndarray, generate_batch: Callable[[np.ndarray], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """``inputs: (B, row_length) int64`` and ``labels: (B,) int64`` of ``indices`` (checked, 1-D, int64): what
    ``generate_batch(indices)`` returns, with the rows ``spec``'s entry holds read from it."""
    entry = open_entry(spec)
    hit = indices < (0 if entry is None else entry.count)
    if not hit.any():
        return generate_batch(indices)
    tokens = np.empty((indices.size, spec.row_length), dtype=np.int64)
    labels = np.empty(indices.size, dtype=np.int64)
    tokens[hit] = entry.tokens[indices[hit]]
    labels[hit] = entry.labels[indices[hit]]
    if not hit.all():
        generated = generate_batch(indices[~hit])
        tokens[~hit], labels[~hit] = generated[0].numpy(), generated[1].numpy()
    return torch.from_numpy(tokens), torch.from_numpy(labels)


def _unusable(spec: EntrySpec, directory: Path, why: str) -> ExampleCacheError:
    return ExampleCacheError(
        f"cache entry {directory} is unusable: {why}. Delete it (rm -r {directory}) or rebuild it: "
        f"{spec.command} --count N --rebuild"
    )


def _read_manifest(spec: EntrySpec, directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise _unusable(spec, directory, f"its {MANIFEST} cannot be read ({error})") from None
    if not isinstance(manifest, dict):
        raise _unusable(spec, directory, f"its {MANIFEST} is not a JSON object")
    return manifest


def _same_version(spec: EntrySpec, directory: Path, manifest: dict[str, Any], consequence: str) -> bool:
    """Whether the entry was built by this generator version; if not, says so (one line) with ``consequence``."""
    version = manifest.get("generator_version")
    if version == spec.version:
        return True
    warnings.warn(f"longseq: cache entry {directory} was built by {spec.family} generator version {version!r}, "
                  f"this is version {spec.version}; {consequence}.", RuntimeWarning, stacklevel=4)
    return False


def _verify(spec: EntrySpec, directory: Path, manifest: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict]:
    """The entry's arrays cut to ``count`` rows and their running SHA-256s, after every check of the module
    docstring; ``ExampleCacheError`` at the first that fails."""
    expected = {"fingerprint": spec.fingerprint, **spec.identity, "row_length": spec.row_length}
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise _unusable(spec, directory, f"its manifest's {key} is {manifest.get(key)!r}, expected {value!r}")
    count = manifest.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise _unusable(spec, directory, f"its manifest's count is {count!r}, expected an int >= 1")
    recorded = manifest.get("sha256") if isinstance(manifest.get("sha256"), dict) else {}
    arrays, digests = {}, {}
    for name, dtype in ARRAYS.items():
        try:
            array = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise _unusable(spec, directory, f"{name}.npy cannot be read ({error})") from None
        tail = (spec.row_length,) if name == "tokens" else ()
        if array.dtype != dtype or array.shape[1:] != tail or array.shape[0] < count:
            raise _unusable(spec, directory, f"{name}.npy holds {array.dtype} {array.shape}, expected {dtype} "
                                             f"({count} or more{''.join(f', {n}' for n in tail)})")
        arrays[name] = array[:count]
        digests[name] = _sha256(arrays[name])
        if digests[name].hexdigest() != recorded.get(name):
            raise _unusable(spec, directory, f"the SHA-256 of the {count} rows of {name}.npy is not the manifest's")
    last = count - 1
    tokens, label = spec.generate(last)
    if not np.array_equal(arrays["tokens"][last], tokens) or int(arrays["labels"][last]) != label:
        raise _unusable(spec, directory, f"example {last} is not what the generator produces now (was the generator "
                                         f"changed without bumping its version, {spec.version}?)")
    return arrays, digests


def _sha256(array: np.ndarray) -> Any:
    digest = hashlib.sha256()
    step = max(1, _HASH_BYTES // max(1, array[:1].nbytes))
    for start in range(0, array.shape[0], step):
        digest.update(np.ascontiguousarray(array[start : start + step]))
    return digest


# ----------------------------------------------------------------------------------------------------------
# Listing


@dataclasses.dataclass(frozen=True)
class EntryInfo:
    """An entry as its manifest describes it, unverified (for listings): ``manifest`` None when unreadable."""

    path: Path
    manifest: dict[str, Any] | None
    size_bytes: int


def list_entries(family: str, root: Path | None = None) -> list[EntryInfo]:
    """The committed entries of ``family`` under ``root`` (default ``cache_root()``), by folder name; reads only
    the manifests."""
    entries = []
    for path in sorted(((cache_root() if root is None else root) / family).glob(f"*/{MANIFEST}")):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            manifest = None
        size = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())
        entries.append(EntryInfo(path.parent, manifest if isinstance(manifest, dict) else None, size))
    return entries


# ----------------------------------------------------------------------------------------------------------
# Building


@dataclasses.dataclass(frozen=True)
class BuildReport:
    """What ``build_entry`` did: the entry held ``before`` examples and now holds ``count``; ``seconds`` of wall time
    generating and writing the ``count - before`` new ones."""

    path: Path
    before: int
    count: int
    seconds: float


def build_entry(
    spec: EntrySpec,
    count: int,
    *,
    workers: int = 1,
    rebuild: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    root: Path | None = None,
) -> BuildReport:
    """Extend ``spec``'s entry to hold examples ``0 .. count-1`` (module docstring: it resumes where the last commit
    left off). ``workers`` processes generate (1: this process); ``rebuild`` starts over; ``on_progress(done,
    total)`` after each group of examples written, counting this build's examples only."""
    for name, value in (("count", count), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: allowed an int >= 1")
    directory = spec.directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory):
        before, digests = _start(spec, directory, rebuild)
        if count <= before:
            return BuildReport(directory, before, before, 0.0)
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            files = {name: stack.enter_context(_AppendedArray(directory / f"{name}.npy", before)) for name in ARRAYS}
            done, committed = before, before
            if on_progress is not None:
                on_progress(0, count - before)
            for arrays in stack.enter_context(contextlib.closing(_generated(spec, before, count, workers))):
                for name, array in zip(ARRAYS, arrays, strict=True):
                    stored = np.ascontiguousarray(array, dtype=ARRAYS[name])
                    files[name].append(stored)
                    digests[name].update(stored)
                done += len(arrays[0])
                if done - committed >= COMMIT_EVERY or done == count:
                    _commit(spec, directory, files, digests, done)
                    committed = done
                if on_progress is not None:
                    on_progress(done - before, count - before)
        return BuildReport(directory, before, count, time.perf_counter() - started)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExampleCacheError(f"cache entry {directory} is being built by another process; wait for it to "
                                    "finish (or end it) and run this again") from None
        yield


def _start(spec: EntrySpec, directory: Path, rebuild: bool) -> tuple[int, dict]:
    """The examples the entry holds and their running SHA-256s: a verified entry's, or 0 after emptying it
    (``rebuild``, no committed entry, another generator version)."""
    if not rebuild and (directory / MANIFEST).exists():
        manifest = _read_manifest(spec, directory)
        if _same_version(spec, directory, manifest, "starting it over"):
            arrays, digests = _verify(spec, directory, manifest)
            return len(arrays["labels"]), digests
    (directory / MANIFEST).unlink(missing_ok=True)  # first, so no reader takes the new files for the old entry
    for name, dtype in ARRAYS.items():
        tail = (spec.row_length,) if name == "tokens" else ()
        path = directory / f"{name}.npy"
        path.unlink(missing_ok=True)  # a reader's memory map keeps the old file
        with open(path, "wb") as file:
            _write_header(file, dtype, (0, *tail))
    return 0, {name: hashlib.sha256() for name in ARRAYS}


def _write_header(file: BinaryIO, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Write an .npy header at the start of ``file``; returns its length (the data's offset)."""
    file.seek(0)
    np.lib.format.write_array_header_1_0(
        file, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return file.tell()


class _AppendedArray:
    """An entry's ``.npy`` opened to append rows after its first ``rows`` (whatever lies past them is cut off)."""

    def __init__(self, path: Path, rows: int) -> None:
        self.path, self.file = path, open(path, "r+b")  # noqa: SIM115 (closed by __exit__)
        try:
            if np.lib.format.read_magic(self.file) != (1, 0):
                raise ExampleCacheError(f"{path} is not an .npy file of format 1.0, as the cache writes them; "
                                        f"delete its entry (rm -r {path.parent})")
            shape, _, self.dtype = np.lib.format.read_array_header_1_0(self.file)
            self.tail, self.offset = shape[1:], self.file.tell()
            self.header(rows)  # before cutting, so that the header never claims more rows than the file holds
            self.file.truncate(self.offset + rows * self.row_bytes)
        except BaseException:
            self.file.close()
            raise

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.tail, dtype=np.int64)) * self.dtype.itemsize

    def header(self, rows: int) -> None:
        if _write_header(self.file, self.dtype, (rows, *self.tail)) != self.offset:
            raise RuntimeError(f"{self.path}: the .npy header changed length; numpy no longer reserves room to grow")

    def append(self, array: np.ndarray) -> None:
        """Append rows already of the file's dtype and row shape."""
        self.file.seek(0, os.SEEK_END)
        self.file.write(array.tobytes())

    def __enter__(self) -> _AppendedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _commit(spec: EntrySpec, directory: Path, files: dict[str, _AppendedArray], digests: dict, count: int) -> None:
    """Make the first ``count`` rows the entry: data durable, headers updated, then the manifest renamed in."""
    for file in files.values():
        file.header(count)
        file.file.flush()
        os.fsync(file.file.fileno())
    manifest = {
        "fingerprint": spec.fingerprint,
        "generator_version": spec.version,
        **spec.identity,
        "row_length": spec.row_length,
        "count": count,
        "sha256": {name: digest.hexdigest() for name, digest in digests.items()},
        "longseq_version": __version__,
    }
    temporary = directory / f".{MANIFEST}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        json.dump(manifest, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, directory / MANIFEST)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself
    finally:
        os.close(descriptor)


def _generate_rows(spec: EntrySpec, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """``tokens: (stop - start, row_length) uint8`` and ``labels: (stop - start,) int64`` of examples start..stop-1."""
    tokens = np.empty((stop - start, spec.row_length), dtype=np.uint8)
    labels = np.empty(stop - start, dtype=np.int64)
    for row, index in enumerate(range(start, stop)):
        values, label = spec.generate(index)
        values = np.asarray(values)
        if values.shape != (spec.row_length,) or values.min() < 0 or values.max() > 255:
            raise ValueError(f"{spec.family} example {index}: tokens {values.dtype} {values.shape}, expected "
                             f"({spec.row_length},) in [0, 256) to cache them as bytes")
        tokens[row], labels[row] = values, label
    return tokens, labels


def _generated(spec: EntrySpec, start: int, stop: int, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Examples ``start .. stop-1`` in order, ``TASK_EXAMPLES`` at a time, from ``workers`` processes with at most
    ``4 * workers`` tasks in flight, so that memory stays bounded whatever the count."""
    bounds = [(lo, min(lo + TASK_EXAMPLES, stop)) for lo in range(start, stop, TASK_EXAMPLES)]
    if workers == 1:
        for lo, hi in bounds:
            yield _generate_rows(spec, lo, hi)
        return
    # spawn: forking a process that holds torch's thread pools can deadlock the children
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending: deque[Future] = deque()
        try:
            for lo, hi in bounds:
                pending.append(pool.submit(_generate_rows, spec, lo, hi))
                if len(pending) >= 4 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or an interrupt: do not generate what will not be written
            for future in pending:
                future.cancel()


__all__ = [
    "CACHE_ENV",
    "BuildReport",
    "CachedExamples",
    "EntryInfo",
    "EntrySpec",
    "ExampleCacheError",
    "build_entry",
    "cache_root",
    "cached_batch",
    "list_entries",
    "open_entry",
]
