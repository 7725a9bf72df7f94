"""Results store (SQLite runs and speed points) and the provenance recorded with every result."""

from longseq.results.provenance import collect_provenance
from longseq.results.store import ResultsStore, ResultsStoreError, default_store_path

__all__ = ["ResultsStore", "ResultsStoreError", "collect_provenance", "default_store_path"]
