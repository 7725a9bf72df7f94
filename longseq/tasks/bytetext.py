"""Byte-level text classification of long windows: the LRA-Text stand-in, on texts available offline.

LRA's "Text" task classifies IMDb reviews from their bytes (4,096 of them, 2 classes). IMDb cannot be had offline,
so this task classifies 4,096-byte windows (``seq_len``) of offline texts by where they come from
(``tasks.md`` §2.3). It is not IMDb: results are not comparable with LRA's Text numbers. ``classes``:

- ``source`` (default, 3 classes): ``shakespeare`` (his 37 plays and 5 poems), ``milton`` (four works) and
  ``python-docs`` (the Python documentation sources). Needs datasets ``shakespeare`` and ``python-docs``.
- ``genre`` (3 classes): Shakespeare's plays by their First Folio genre, ``comedy`` (14 plays), ``history`` (10)
  and ``tragedy`` (12); Pericles and the poems take no part. Needs dataset ``shakespeare`` only.

Which files, and how their bytes are cleaned, is ``longseq.data.text``. Tokens are the bytes, vocabulary 256;
every window is full length (no padding).

**Examples.** Per example the class is uniform (balanced labels), then the window is uniform over every window of
that class: a longer document gives proportionally more windows, a class's share does not depend on its size.
**Split.** The first 80% of every document is train and the last 20% test (``data.windows``): test windows come
from the same works as the train ones but never share a byte position with them. A document takes part when both
of its regions hold a window (at 4,096: 20,480 bytes or more; the shortest Shakespeare poems and many short Python
documentation pages do not). Defaults: 25,000 train and 25,000 test examples, LRA's (IMDb's) split sizes. The
validation split (``num_test`` examples) draws other windows from the test regions, as LRA validates Text on its
test set (``tasks/_real.py``).

The documents with their sources and genres (``Document``) are what the retrieval stand-in ``byte_retrieval`` (two
windows: same work or not?) draws from too.
"""

from __future__ import annotations

from typing import Literal

from longseq.data.text import Document, milton_documents, python_doc_documents, shakespeare_documents
from longseq.tasks._real import DataPaths, WindowClassification, WindowDraws, check_paths
from longseq.tasks._tokens import PositiveInt, Seed
from longseq.tasks.base import register_task

CLASS_SETS: dict[str, tuple[str, ...]] = {
    "source": ("shakespeare", "milton", "python-docs"),
    "genre": ("comedy", "history", "tragedy"),
}
"""``classes`` -> the class names, in label order."""
DATASETS_READ: dict[str, tuple[str, ...]] = {"source": ("shakespeare", "python-docs"), "genre": ("shakespeare",)}


def class_documents(classes: str, paths: dict[str, str] | None) -> dict[str, list[Document]]:
    """Class name -> its documents, for the class set ``classes`` (module docstring)."""
    paths = paths or {}
    plays = shakespeare_documents(paths.get("shakespeare"))
    if classes == "genre":
        return {genre: [doc for doc in plays if doc.genre == genre] for genre in CLASS_SETS["genre"]}
    sources = (plays, milton_documents(paths.get("shakespeare")), python_doc_documents(paths.get("python-docs")))
    return dict(zip(CLASS_SETS["source"], sources, strict=True))


@register_task("bytetext")
class ByteText(WindowClassification):
    """Byte-level classification of 4,096-byte text windows by source or Shakespeare genre: the LRA-Text stand-in.

    Sources: Shakespeare, Milton, Python docs; genres: the First Folio's. Offline texts, not IMDb.

    Parameters: ``classes`` source / genre, ``seq_len`` (the window, 4,096 bytes as LRA), the split sizes (25,000
    and 25,000), ``seed``, ``paths`` (``{"shakespeare": DIR, "python-docs": DIR}``; defaults
    ``LONGSEQ_DATA_<NAME>`` or where ``longseq data`` says). Labels are ``class_names`` in order.
    """

    name = "bytetext"
    vocab_size = 256

    def __init__(
        self,
        *,
        classes: Literal["source", "genre"] = "source",
        seq_len: PositiveInt = 4096,
        num_train: PositiveInt = 25_000,
        num_test: PositiveInt = 25_000,
        seed: Seed = 0,
        paths: DataPaths = None,
    ) -> None:
        check_paths(self.name, paths, DATASETS_READ[classes])
        self.classes, self.seq_len, self.num_train, self.num_test = classes, seq_len, num_train, num_test
        self.seed, self.paths = seed, paths
        sequences = {name: [(doc.name, doc.data) for doc in docs]
                     for name, docs in class_documents(classes, paths).items()}
        self.windows = WindowDraws.cut_sequences(self.name, seq_len, sequences)
        self.class_names = self.windows.class_names
        self.num_classes = len(self.class_names)
