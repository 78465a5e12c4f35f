"""Datasets: document collections for retrieval — text from files (loaders), chunks by tokens with
overlap (chunking), embeddings through the pipeline, SQLite with a vector index and FTS5 (store) or
PostgreSQL (pg_store, with ``database_url``), and hybrid search with citations (service)."""

from llmhost.apps.datasets.loaders import FORMATS
from llmhost.apps.datasets.service import Datasets, Hit, SearchMode, open_store
from llmhost.apps.datasets.store import DatasetInfo, DatasetStore, DocumentInfo, StoredChunk

__all__ = [
    "FORMATS",
    "DatasetInfo",
    "DatasetStore",
    "Datasets",
    "DocumentInfo",
    "Hit",
    "SearchMode",
    "StoredChunk",
    "open_store",
]
