"""Datasets, documents and chunks in PostgreSQL (``database_url``), shared by every instance that names it.

The same store as :class:`~llmhost.apps.datasets.store.DatasetStore` (same methods, same answers' shapes),
over PostgreSQL without extensions:

* text search is PostgreSQL's own: each chunk's words (folded as for SQLite's index) in a ``tsvector``
  with the ``simple`` configuration (no stemming, as FTS5's ``unicode61``), a GIN index, and
  ``ts_rank_cd`` as the score (PostgreSQL has no BM25; the ranks are fused by position, so only each
  list's order matters);
* vectors are stored as float32 bytes, and a search ranks one dataset's vectors by cosine distance with
  numpy (exact k-NN; pgvector is not assumed). The vectors of the datasets searched last stay in memory
  (``VECTOR_CACHE_BYTES``) until the dataset changes: every write bumps the dataset's change counter, so
  each instance reloads what another one changed, on its next search.

Every write is one transaction, and writes to one dataset hold its row (``FOR UPDATE``), so two
instances re-ingesting the same document one after the other leave one copy; a reader's search is one
statement, so it sees the old document or the new one, never a mix.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmhost.apps.datasets.store import (
    MAX_QUERY_TERMS,
    DatasetInfo,
    DocumentInfo,
    StoredChunk,
    folded_words,
)
from llmhost.errors import ConflictError, NotFoundError, RequestError
from llmhost.storage.db import INTEGRITY_ERRORS, Database, Transaction
from llmhost.storage.migrate import migrate

__all__ = ["MIGRATIONS", "VECTOR_CACHE_BYTES", "PostgresDatasetStore", "tsquery"]

VECTOR_CACHE_BYTES = 512 * 2**20  # the vectors kept in memory for searches (~340,000 of 384 floats)
_Vectors = tuple[int, np.ndarray, np.ndarray]  # (the dataset's change counter, chunk ids, vectors)

MIGRATIONS = (
    (
        "CREATE TABLE IF NOT EXISTS datasets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
        " description TEXT NOT NULL, embedding_model TEXT NOT NULL, dim INTEGER,"
        " chunk_tokens INTEGER NOT NULL, chunk_overlap INTEGER NOT NULL, created REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS dataset_documents (id INTEGER PRIMARY KEY,"
        " dataset_id INTEGER NOT NULL REFERENCES datasets (id) ON DELETE CASCADE, name TEXT NOT NULL,"
        " format TEXT NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL,"
        " created REAL NOT NULL, UNIQUE (dataset_id, name))",
        "CREATE TABLE IF NOT EXISTS dataset_chunks (id INTEGER PRIMARY KEY, dataset_id INTEGER NOT NULL,"
        " document_id INTEGER NOT NULL REFERENCES dataset_documents (id) ON DELETE CASCADE,"
        " idx INTEGER NOT NULL, start_pos INTEGER NOT NULL, end_pos INTEGER NOT NULL, text TEXT NOT NULL,"
        " embedding BLOB NOT NULL, terms tsvector NOT NULL)",
        "CREATE INDEX IF NOT EXISTS dataset_chunks_document ON dataset_chunks (document_id)",
        "CREATE INDEX IF NOT EXISTS dataset_chunks_dataset ON dataset_chunks (dataset_id)",
        "CREATE INDEX IF NOT EXISTS dataset_chunks_terms ON dataset_chunks USING GIN (terms)",
    ),
)

_SELECT = (
    "SELECT d.id, d.name, d.description, d.embedding_model, d.dim, d.chunk_tokens, d.chunk_overlap,"
    " d.created, (SELECT count(*) FROM dataset_documents WHERE dataset_id = d.id),"
    " (SELECT coalesce(sum(chunks), 0) FROM dataset_documents WHERE dataset_id = d.id) FROM datasets d"
)
_DOCUMENT = "SELECT id, name, format, bytes, sha256, chunks, created FROM dataset_documents"


def _component(dataset_id: int) -> str:
    """The change counter of one dataset's chunks (``llmhost_changes``)."""
    return f"dataset:{dataset_id}"


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(f"no dataset named {name!r}", param="dataset", code="dataset_not_found")


def tsquery(text: str) -> str | None:
    """The user's words as a ``to_tsquery`` text: any of them (letters and digits only, so no
    operator gets through)."""
    words = list(dict.fromkeys(folded_words(text)))[:MAX_QUERY_TERMS]
    return " | ".join(words) if words else None


class PostgresDatasetStore:
    def __init__(self, db: Database, *, cache_bytes: int = VECTOR_CACHE_BYTES) -> None:
        if db.dialect != "postgresql":
            raise ValueError("PostgresDatasetStore needs a PostgreSQL database")
        self._db = db
        migrate(db, "datasets", MIGRATIONS)
        # dataset id -> (change counter, chunk ids, vectors): the most recently searched datasets' vectors.
        self._cache: collections.OrderedDict[int, _Vectors] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_bytes = cache_bytes

    # ----- datasets ----------------------------------------------------------------------------------
    def create(
        self, name: str, description: str, embedding_model: str, chunk_tokens: int, overlap: int
    ) -> DatasetInfo:
        now = time.time()
        try:
            with self._db.transaction() as tx:
                row = tx.execute(
                    "INSERT INTO datasets (name, description, embedding_model, dim, chunk_tokens,"
                    " chunk_overlap, created) VALUES (?, ?, ?, NULL, ?, ?, ?) RETURNING id",
                    (name, description, embedding_model, chunk_tokens, overlap, now),
                ).fetchone()
        except INTEGRITY_ERRORS:
            raise ConflictError(f"a dataset named {name!r} already exists") from None
        return DatasetInfo(int(row[0]), name, description, embedding_model, None, chunk_tokens, overlap, now)

    @staticmethod
    def _info(row: Sequence[Any]) -> DatasetInfo:
        i, name, description, model, dim, tokens, overlap, created, documents, chunks = row
        return DatasetInfo(
            int(i),
            name,
            description,
            model,
            None if dim is None else int(dim),
            int(tokens),
            int(overlap),
            float(created),
            documents=int(documents or 0),
            chunks=int(chunks or 0),
        )

    def get(self, name: str) -> DatasetInfo:
        row = self._db.query_one(f"{_SELECT} WHERE d.name = ?", (name,))
        if row is None:
            raise _not_found(name)
        return self._info(row)

    def exists(self, name: str) -> bool:
        return self._db.query_one("SELECT 1 FROM datasets WHERE name = ?", (name,)) is not None

    def all(self) -> list[DatasetInfo]:
        return [self._info(r) for r in self._db.query(f"{_SELECT} ORDER BY d.name")]

    def delete(self, name: str) -> None:
        with self._db.transaction() as tx:  # documents and chunks go with it (ON DELETE CASCADE)
            row = tx.execute("DELETE FROM datasets WHERE name = ? RETURNING id", (name,)).fetchone()
            if row is None:
                raise _not_found(name)
            tx.touch(_component(int(row[0])))

    # ----- documents ---------------------------------------------------------------------------------
    @staticmethod
    def _locked(tx: Transaction, dataset: str) -> tuple[int, int | None]:
        """(id, dim) of ``dataset``, its row held until the transaction ends."""
        row = tx.execute("SELECT id, dim FROM datasets WHERE name = ? FOR UPDATE", (dataset,)).fetchone()
        if row is None:
            raise _not_found(dataset)
        return int(row[0]), None if row[1] is None else int(row[1])

    def put_document(
        self, dataset: str, name: str, fmt: str, size: int, sha256: str, chunks: Sequence[StoredChunk]
    ) -> DocumentInfo:
        """Write a document and its chunks, replacing a document of the same name, in one transaction."""
        dim = len(chunks[0].vector) if chunks else None
        now = time.time()
        with self._db.transaction() as tx:
            ds_id, ds_dim = self._locked(tx, dataset)
            tx.touch(_component(ds_id))
            if dim is not None and ds_dim is not None and dim != ds_dim:
                raise RequestError(
                    f"dataset {dataset!r} holds {ds_dim}-dimensional vectors; this embedding gave {dim}"
                )
            if dim is not None and ds_dim is None:
                tx.execute("UPDATE datasets SET dim = ? WHERE id = ?", (dim, ds_id))
            tx.execute("DELETE FROM dataset_documents WHERE dataset_id = ? AND name = ?", (ds_id, name))
            row = tx.execute(
                "INSERT INTO dataset_documents (dataset_id, name, format, bytes, sha256, chunks, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (ds_id, name, fmt, size, sha256, len(chunks), now),
            ).fetchone()
            doc_id = int(row[0])
            tx.executemany(
                "INSERT INTO dataset_chunks (dataset_id, document_id, idx, start_pos, end_pos, text,"
                " embedding, terms) VALUES (?, ?, ?, ?, ?, ?, ?, to_tsvector('simple', ?))",
                [
                    (
                        ds_id,
                        doc_id,
                        n,
                        c.start,
                        c.end,
                        c.text,
                        np.asarray(c.vector, dtype=np.float32).tobytes(),
                        " ".join(folded_words(c.text)),
                    )
                    for n, c in enumerate(chunks)
                ],
            )
        return DocumentInfo(doc_id, dataset, name, fmt, size, sha256, len(chunks), now)

    def bulk_insert(self, dataset: str, doc_name: str, chunks: Sequence[StoredChunk]) -> None:
        """A benchmark's fast path: append a document's chunks without the replace checks."""
        self.put_document(dataset, doc_name, "txt", sum(len(c.text) for c in chunks), "", chunks)

    def documents(self, dataset: str) -> list[DocumentInfo]:
        info = self.get(dataset)
        rows = self._db.query(f"{_DOCUMENT} WHERE dataset_id = ? ORDER BY name", (info.id,))
        return [self._document(dataset, r) for r in rows]

    @staticmethod
    def _document(dataset: str, row: Sequence[Any]) -> DocumentInfo:
        i, name, fmt, size, sha256, chunks, created = row
        return DocumentInfo(int(i), dataset, name, fmt, int(size), sha256, int(chunks), float(created))

    def delete_document(self, dataset: str, ref: str) -> DocumentInfo:
        """Delete a document by its id (``doc_N``) or name."""
        key = ref.removeprefix("doc_")
        by_id = int(key) if ref.startswith("doc_") and key.isdigit() else -1
        with self._db.transaction() as tx:
            ds_id, _ = self._locked(tx, dataset)
            tx.touch(_component(ds_id))
            row = tx.execute(
                f"{_DOCUMENT} WHERE dataset_id = ? AND (name = ? OR id = ?)", (ds_id, ref, by_id)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"dataset {dataset!r} has no document {ref!r}", code="document_not_found")
            tx.execute("DELETE FROM dataset_documents WHERE id = ?", (int(row[0]),))
        return self._document(dataset, row)

    # ----- search ------------------------------------------------------------------------------------
    def _vectors(self, dataset_id: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """The dataset's chunk ids and vectors (one row each), read once per change of the dataset: writes
        bump its change counter (any instance's), so a search costs one indexed row read until then."""
        version = self._db.version(_component(dataset_id))
        with self._cache_lock:
            cached = self._cache.get(dataset_id)
            if cached is not None and cached[0] == version:
                self._cache.move_to_end(dataset_id)
                return cached[1], cached[2]
        rows = self._db.query(
            "SELECT id, embedding FROM dataset_chunks WHERE dataset_id = ? ORDER BY id",
            (dataset_id,),
            binary=True,
        )
        ids = np.fromiter((int(r[0]) for r in rows), dtype=np.int64, count=len(rows))
        raw = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        matrix = (raw / np.where(norms == 0, 1.0, norms)).astype(np.float32)  # unit rows: cosine = a product
        with self._cache_lock:
            self._cache[dataset_id] = (version, ids, matrix)
            self._cache.move_to_end(dataset_id)
            while len(self._cache) > 1 and sum(v[2].nbytes for v in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
        return ids, matrix

    def vector_search(self, dataset_id: int, dim: int, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine distance) of the ``k`` nearest chunks of one dataset (exact)."""
        if k <= 0:
            return []
        ids, matrix = self._vectors(dataset_id, dim)
        if not len(ids):
            return []
        query = np.asarray(vector, dtype=np.float32)
        distance = 1.0 - matrix @ (query / max(float(np.linalg.norm(query)), 1e-30))
        nearest = np.argpartition(distance, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        nearest = nearest[np.argsort(distance[nearest], kind="stable")]
        return [(int(ids[i]), float(distance[i])) for i in nearest]

    def text_search(self, dataset_ids: Sequence[int], query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, score, lower is better: the negated ``ts_rank_cd``) of the ``k`` best matches."""
        q = tsquery(query)
        if q is None or not dataset_ids:
            return []
        rows = self._db.query(
            "SELECT c.id, ts_rank_cd(c.terms, q.q) AS rank FROM dataset_chunks c,"
            " to_tsquery('simple', ?) AS q (q) WHERE c.dataset_id = ANY(?) AND c.terms @@ q.q"
            " ORDER BY rank DESC, c.id LIMIT ?",
            (q, list(dataset_ids), k),
        )
        return [(int(r[0]), -float(r[1])) for r in rows]

    def chunks_by_id(self, ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """id -> (dataset, document, document id, chunk index, start, end, text)."""
        if not ids:
            return {}
        rows = self._db.query(
            "SELECT c.id, s.name, d.name, d.id, c.idx, c.start_pos, c.end_pos, c.text FROM dataset_chunks c"
            " JOIN dataset_documents d ON d.id = c.document_id JOIN datasets s ON s.id = c.dataset_id"
            " WHERE c.id = ANY(?)",
            (list(ids),),
        )
        return {int(r[0]): (r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), r[7]) for r in rows}

    def close(self) -> None:
        self._db.close()
