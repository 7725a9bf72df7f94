"""FASTA: a strict reader (plain, gzip, or members of a tar archive) and a writer, with the nucleotide coding.

A FASTA file is records, each a ``>`` header line then sequence lines; blank lines are skipped. The reader refuses,
with a ``DatasetFormatError`` naming the file and line: sequence data before the first header, an empty header,
a record without sequence, a character other than a letter in a sequence line (IUPAC codes are letters), and a
file without any record.

Coding (``encode``): ``A C G T`` -> 0 1 2 3 in either case, every other letter (``N`` and the IUPAC ambiguity
codes) -> 4 (``N``), so ``VOCAB`` is ``ACGTN``.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longseq.data._cache import cached_by_file
from longseq.data.idx import read_bytes
from longseq.data.registry import DatasetFormatError

VOCAB = "ACGTN"
N_CODE = 4
_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))
_CODES = np.full(256, N_CODE, dtype=np.uint8)
for _code, _base in enumerate("ACGT"):
    _CODES[ord(_base)] = _CODES[ord(_base.lower())] = _code
FASTA_SUFFIXES = (".fa", ".fna", ".fasta", ".fa.gz", ".fna.gz", ".fasta.gz")


@dataclass(frozen=True, eq=False)
class FastaRecord:
    """One record: its header (without ``>``) and its bases coded 0..4, ``codes: (n,) uint8`` (read-only)."""

    header: str
    codes: np.ndarray

    @property
    def identifier(self) -> str:
        """The header's first word (e.g. ``gi|110640213|ref|NC_008253.1|`` or ``NC_000962.3``)."""
        return self.header.split()[0]

    def has_accession(self, accession: str) -> bool:
        """Whether the identifier is ``accession`` or holds it as a ``|``-separated field (NCBI's gi|..|ref|..|)."""
        return accession in self.identifier.split("|")


def encode(sequence: bytes) -> np.ndarray:
    """Bases as codes: ``(n,) uint8``, ACGT (either case) -> 0..3, anything else -> 4."""
    return _CODES[np.frombuffer(sequence, dtype=np.uint8)]


def parse_fasta(data: bytes, source: str = "<bytes>") -> list[FastaRecord]:
    """The records of FASTA text ``data`` (module docstring); ``source`` names it in errors."""
    records: list[FastaRecord] = []
    header: str | None = None
    chunks: list[bytes] = []
    header_line = 0

    def close() -> None:
        if header is None:
            return
        if not chunks:
            raise DatasetFormatError(f"{source}: record {header.split()[0]!r} (line {header_line}) has no sequence")
        codes = encode(b"".join(chunks))
        codes.flags.writeable = False
        records.append(FastaRecord(header, codes))

    for number, line in enumerate(data.split(b"\n"), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(b">"):
            close()
            header, chunks, header_line = line[1:].strip().decode("ascii", "replace"), [], number
            if not header:
                raise DatasetFormatError(f"{source}: empty header at line {number}")
            continue
        if header is None:
            raise DatasetFormatError(f"{source}: sequence data before the first '>' header, at line {number}")
        bad = line.translate(None, _LETTERS)
        if bad:
            raise DatasetFormatError(f"{source}: line {number}: {chr(bad[0])!r} is not a base letter")
        chunks.append(line)
    close()
    if not records:
        raise DatasetFormatError(f"{source}: no FASTA records (no line starts with '>')")
    return records


@cached_by_file(maxsize=16)
def read_fasta(path: Path) -> list[FastaRecord]:
    """The records of FASTA file ``path`` (gzip-compressed or not)."""
    return parse_fasta(read_bytes(path), str(path))


@cached_by_file(maxsize=4)
def read_fasta_tar(path: Path) -> dict[str, list[FastaRecord]]:
    """The records of every FASTA member (``FASTA_SUFFIXES``) of tar archive ``path`` (compressed or not), by
    member name."""
    try:
        with tarfile.open(path) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(FASTA_SUFFIXES)]
            contents = {m.name: archive.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DatasetFormatError(f"{path}: not a readable tar archive ({error})") from None
    if not contents:
        raise DatasetFormatError(f"{path}: the archive holds no FASTA file ({', '.join(FASTA_SUFFIXES)})")
    return {
        name: parse_fasta(gzip.decompress(data) if name.endswith(".gz") else data, f"{path}:{name}")
        for name, data in contents.items()
    }


def format_fasta(records: list[tuple[str, str]], width: int = 70) -> bytes:
    """FASTA text of ``(header, sequence)`` pairs, sequence lines ``width`` letters long."""
    out = io.StringIO()
    for header, sequence in records:
        out.write(f">{header}\n")
        for start in range(0, len(sequence), width):
            out.write(sequence[start : start + width] + "\n")
    return out.getvalue().encode("ascii")


def write_fasta(path: str | os.PathLike, records: list[tuple[str, str]], width: int = 70) -> Path:
    """Write ``records`` as a FASTA file, gzip-compressed when ``path`` ends in ``.gz``."""
    path = Path(path)
    data = format_fasta(records, width)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path
