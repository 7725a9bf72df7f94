"""The IDX format (LeCun's MNIST files, which Fashion-MNIST keeps): a strict reader and its writer.

Layout (all integers big-endian): two zero bytes; a type code (``0x08`` unsigned byte, the only one MNIST-style
files use and the only one read here); the number of dimensions ``n``; ``n`` uint32 sizes; then the
``prod(sizes)`` values in row-major order. Files are usually gzip-compressed (``.gz``); plain files are read too.

The reader refuses anything else with a ``DatasetFormatError`` naming the file: a bad magic, a header cut short,
fewer bytes of data than the sizes promise (a truncated download) or more (trailing garbage), a corrupt gzip stream.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from longseq.data.registry import DatasetFormatError

UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The contents of ``path``, gunzipped when it is gzip data; ``DatasetFormatError`` for a corrupt stream."""
    raw = Path(path).read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(f"{path}: corrupt or truncated gzip data ({error})") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The uint8 array of an IDX byte string (see the module docstring); read-only."""
    if len(data) < 4:
        raise DatasetFormatError(f"{source}: {len(data)} bytes is too short for an IDX header (4 bytes of magic)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code != UBYTE or ndim == 0:
        raise DatasetFormatError(
            f"{source}: not an unsigned-byte IDX file (magic {data[:4].hex()}; expected 0000 08 then the number "
            "of dimensions >= 1)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{source}: IDX header cut short ({len(data)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header
    if actual != expected:
        state = "truncated" if actual < expected else "has trailing bytes"
        raise DatasetFormatError(
            f"{source}: IDX file {state}: shape {shape} needs {expected} bytes of data, found {actual}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    array.flags.writeable = False
    return array


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The uint8 array stored in IDX file ``path`` (gzip-compressed or not)."""
    return parse_idx(read_bytes(path), str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` (uint8, >= 1 dimension) as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"write_idx needs a uint8 array of >= 1 dimension, got {array.dtype} {array.shape}")
    data = struct.pack(f">HBB{array.ndim}I", 0, UBYTE, array.ndim, *array.shape) + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path
