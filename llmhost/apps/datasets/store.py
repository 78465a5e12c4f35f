"""Datasets, documents and chunks in SQLite (``<data_dir>/datasets.db``): a vector index per embedding
width (``sqlite-vec``'s ``vec0``, partitioned by dataset, so a search scans only the datasets it names)
and a full-text index (FTS5 over the chunks' text, each row tagged with its dataset so the text search
narrows by the index too).

Every write is one transaction: re-ingesting a document deletes its old chunks and writes the new ones
at once, so a reader sees the old document or the new one, never a mix.
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmhost.apps.datasets.sqlite import connect
from llmhost.errors import ConflictError, NotFoundError, RequestError

__all__ = [
    "MAX_QUERY_TERMS",
    "DatasetInfo",
    "DatasetStore",
    "DocumentInfo",
    "StoredChunk",
    "folded_words",
    "fts_query",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    description     TEXT NOT NULL,
    embedding_model TEXT NOT NULL,
    dim             INTEGER,
    chunk_tokens    INTEGER NOT NULL,
    chunk_overlap   INTEGER NOT NULL,
    created         REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id         INTEGER PRIMARY KEY,
    dataset_id INTEGER NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    format     TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    chunks     INTEGER NOT NULL,
    created    REAL NOT NULL,
    UNIQUE (dataset_id, name)
);
CREATE TABLE IF NOT EXISTS chunks (
    id          INTEGER PRIMARY KEY,
    dataset_id  INTEGER NOT NULL,
    document_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    start       INTEGER NOT NULL,
    end         INTEGER NOT NULL,
    text        TEXT NOT NULL,
    terms       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks (document_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    terms, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 0'
);
"""
_WORD = re.compile(r"[^\W_]+")
MAX_QUERY_TERMS = 64


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    id: int
    name: str
    description: str
    embedding_model: str
    dim: int | None
    chunk_tokens: int
    chunk_overlap: int
    created: float
    documents: int = 0
    chunks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "dataset",
            "name": self.name,
            "description": self.description,
            "embedding_model": self.embedding_model,
            "dimensions": self.dim,
            "chunk_tokens": self.chunk_tokens,
            "chunk_overlap": self.chunk_overlap,
            "documents": self.documents,
            "chunks": self.chunks,
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: int
    dataset: str
    name: str
    format: str
    bytes: int
    sha256: str
    chunks: int
    created: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "dataset.document",
            "id": f"doc_{self.id}",
            "dataset": self.dataset,
            "name": self.name,
            "format": self.format,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "chunks": self.chunks,
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk to write: its place in the document's text, the text, and its vector."""

    start: int
    end: int
    text: str
    vector: np.ndarray


def folded_words(text: str) -> list[str]:
    """Lower-case words without accents, letters and digits only (what FTS5's tokenizer keeps whole)."""
    folded = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _WORD.findall(plain)


def _terms(dataset_id: int, text: str) -> str:
    """The text's words as index terms of one dataset (``d12xrouter``): each dataset's terms have
    posting lists of their own, so a text search reads only the datasets it names, however large the
    store, and BM25's term statistics are the dataset's own."""
    return " ".join(f"d{dataset_id}x{w}" for w in folded_words(text))


def fts_query(dataset_ids: Sequence[int], text: str) -> str | None:
    """The user's words as an FTS5 query over ``dataset_ids`` (any of the words; every term quoted,
    so no FTS5 syntax gets through)."""
    words = list(dict.fromkeys(folded_words(text)))[:MAX_QUERY_TERMS]
    if not words or not dataset_ids:
        return None
    return " OR ".join(f'"d{i}x{w}"' for i in dataset_ids for w in words)


class DatasetStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._vec_tables: set[int] = set()
        for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'vec_chunks_%'"):
            if str(name).removeprefix("vec_chunks_").isdigit():
                self._vec_tables.add(int(str(name).removeprefix("vec_chunks_")))

    # ----- datasets ----------------------------------------------------------------------------------
    def create(
        self, name: str, description: str, embedding_model: str, chunk_tokens: int, overlap: int
    ) -> DatasetInfo:
        now = time.time()
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO datasets (name, description, embedding_model, dim, chunk_tokens,"
                    " chunk_overlap, created) VALUES (?, ?, ?, NULL, ?, ?, ?)",
                    (name, description, embedding_model, chunk_tokens, overlap, now),
                )
            except Exception as exc:
                if "UNIQUE" in str(exc):
                    raise ConflictError(f"a dataset named {name!r} already exists") from None
                raise
        return DatasetInfo(
            int(cur.lastrowid), name, description, embedding_model, None, chunk_tokens, overlap, now
        )

    def _info(self, row: Sequence[Any]) -> DatasetInfo:
        i, name, description, model, dim, tokens, overlap, created = row[:8]
        return DatasetInfo(
            int(i),
            name,
            description,
            model,
            dim,
            int(tokens),
            int(overlap),
            float(created),
            documents=int(row[8] or 0),
            chunks=int(row[9] or 0),
        )

    _SELECT = (
        "SELECT d.id, d.name, d.description, d.embedding_model, d.dim, d.chunk_tokens, d.chunk_overlap,"
        " d.created, (SELECT count(*) FROM documents WHERE dataset_id = d.id),"
        " (SELECT coalesce(sum(chunks), 0) FROM documents WHERE dataset_id = d.id) FROM datasets d"
    )

    def get(self, name: str) -> DatasetInfo:
        with self._lock:
            row = self._db.execute(f"{self._SELECT} WHERE d.name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no dataset named {name!r}", param="dataset", code="dataset_not_found")
        return self._info(row)

    def exists(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone() is not None

    def all(self) -> list[DatasetInfo]:
        with self._lock:
            rows = self._db.execute(f"{self._SELECT} ORDER BY d.name").fetchall()
        return [self._info(r) for r in rows]

    def delete(self, name: str) -> None:
        info = self.get(name)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._delete_chunks("dataset_id = ?", (info.id,))
                self._db.execute("DELETE FROM documents WHERE dataset_id = ?", (info.id,))
                self._db.execute("DELETE FROM datasets WHERE id = ?", (info.id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ----- documents ---------------------------------------------------------------------------------
    def _vec_table(self, dim: int) -> str:
        table = f"vec_chunks_{int(dim)}"
        if dim not in self._vec_tables:
            self._db.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING vec0("
                f"dataset_id integer partition key, embedding float[{int(dim)}] distance_metric=cosine,"
                " chunk_size=128)"
            )
            self._vec_tables.add(dim)
        return table

    def _delete_chunks(self, where: str, args: tuple[Any, ...]) -> None:
        """Remove chunks (their text index and vectors too); inside the caller's transaction."""
        rows = self._db.execute(f"SELECT id, terms, dataset_id FROM chunks WHERE {where}", args).fetchall()
        if not rows:
            return
        dims = {
            r[0]: r[1]
            for r in self._db.execute(
                f"SELECT id, dim FROM datasets WHERE id IN ({', '.join('?' * len({r[2] for r in rows}))})",
                tuple({r[2] for r in rows}),
            )
        }
        self._db.executemany(
            "INSERT INTO chunks_fts (chunks_fts, rowid, terms) VALUES ('delete', ?, ?)",
            [(r[0], r[1]) for r in rows],
        )
        for dim in {d for d in dims.values() if d}:
            ids = [(r[0],) for r in rows if dims.get(r[2]) == dim]
            self._db.executemany(f"DELETE FROM {self._vec_table(dim)} WHERE rowid = ?", ids)
        self._db.execute(f"DELETE FROM chunks WHERE {where}", args)

    def put_document(
        self, dataset: str, name: str, fmt: str, size: int, sha256: str, chunks: Sequence[StoredChunk]
    ) -> DocumentInfo:
        """Write a document and its chunks, replacing a document of the same name, in one transaction."""
        dim = len(chunks[0].vector) if chunks else None
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id, dim FROM datasets WHERE name = ?", (dataset,)).fetchone()
                if row is None:
                    raise NotFoundError(
                        f"no dataset named {dataset!r}", param="dataset", code="dataset_not_found"
                    )
                ds_id, ds_dim = int(row[0]), row[1]
                if dim is not None and ds_dim is not None and dim != ds_dim:
                    raise RequestError(
                        f"dataset {dataset!r} holds {ds_dim}-dimensional vectors; this embedding gave {dim}"
                    )
                if dim is not None and ds_dim is None:
                    self._db.execute("UPDATE datasets SET dim = ? WHERE id = ?", (dim, ds_id))
                old = self._db.execute(
                    "SELECT id FROM documents WHERE dataset_id = ? AND name = ?", (ds_id, name)
                ).fetchone()
                if old is not None:
                    self._delete_chunks("document_id = ?", (int(old[0]),))
                    self._db.execute("DELETE FROM documents WHERE id = ?", (int(old[0]),))
                cur = self._db.execute(
                    "INSERT INTO documents (dataset_id, name, format, bytes, sha256, chunks, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (ds_id, name, fmt, size, sha256, len(chunks), now),
                )
                doc_id = int(cur.lastrowid)
                self._insert_chunks(ds_id, doc_id, chunks)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return DocumentInfo(doc_id, dataset, name, fmt, size, sha256, len(chunks), now)

    def _insert_chunks(self, ds_id: int, doc_id: int, chunks: Sequence[StoredChunk]) -> None:
        terms = [_terms(ds_id, c.text) for c in chunks]
        first = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM chunks").fetchone()[0]
        ids = list(range(int(first), int(first) + len(chunks)))
        self._db.executemany(
            "INSERT INTO chunks (id, dataset_id, document_id, idx, start, end, text, terms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (i, ds_id, doc_id, n, c.start, c.end, c.text, terms[n])
                for n, (i, c) in enumerate(zip(ids, chunks, strict=True))
            ],
        )
        self._db.executemany(
            "INSERT INTO chunks_fts (rowid, terms) VALUES (?, ?)", list(zip(ids, terms, strict=True))
        )
        if chunks:
            table = self._vec_table(len(chunks[0].vector))
            self._db.executemany(
                f"INSERT INTO {table} (rowid, dataset_id, embedding) VALUES (?, ?, ?)",
                [
                    (i, ds_id, np.asarray(c.vector, dtype=np.float32).tobytes())
                    for i, c in zip(ids, chunks, strict=True)
                ],
            )

    def bulk_insert(self, dataset: str, doc_name: str, chunks: Sequence[StoredChunk]) -> None:
        """A benchmark's fast path: append a document's chunks without the replace checks."""
        self.put_document(dataset, doc_name, "txt", sum(len(c.text) for c in chunks), "", chunks)

    def documents(self, dataset: str) -> list[DocumentInfo]:
        info = self.get(dataset)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, format, bytes, sha256, chunks, created FROM documents WHERE dataset_id = ?"
                " ORDER BY name",
                (info.id,),
            ).fetchall()
        return [DocumentInfo(int(r[0]), dataset, *r[1:]) for r in rows]

    def delete_document(self, dataset: str, ref: str) -> DocumentInfo:
        """Delete a document by its id (``doc_N``) or name."""
        info = self.get(dataset)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                key = ref.removeprefix("doc_")
                row = self._db.execute(
                    "SELECT id, name, format, bytes, sha256, chunks, created FROM documents"
                    " WHERE dataset_id = ? AND (name = ? OR (? AND id = ?))",
                    (
                        info.id,
                        ref,
                        ref.startswith("doc_") and key.isdigit(),
                        int(key) if key.isdigit() else -1,
                    ),
                ).fetchone()
                if row is None:
                    raise NotFoundError(
                        f"dataset {dataset!r} has no document {ref!r}", code="document_not_found"
                    )
                self._delete_chunks("document_id = ?", (int(row[0]),))
                self._db.execute("DELETE FROM documents WHERE id = ?", (int(row[0]),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return DocumentInfo(int(row[0]), dataset, *row[1:])

    # ----- search ------------------------------------------------------------------------------------
    def vector_search(self, dataset_id: int, dim: int, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine distance) of the ``k`` nearest chunks of one dataset."""
        with self._lock:
            if dim not in self._vec_tables:
                return []
            rows = self._db.execute(
                f"SELECT rowid, distance FROM vec_chunks_{int(dim)}"
                " WHERE embedding MATCH ? AND k = ? AND dataset_id = ?",
                (np.asarray(vector, dtype=np.float32).tobytes(), k, dataset_id),
            ).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def text_search(self, dataset_ids: Sequence[int], query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score, lower is better) of the ``k`` best text matches in the datasets."""
        q = fts_query(dataset_ids, query)
        if q is None:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?"
                " ORDER BY rank LIMIT ?",
                (q, k),
            ).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def chunks_by_id(self, ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """id -> (dataset, document, document id, chunk index, start, end, text)."""
        if not ids:
            return {}
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, s.name, d.name, d.id, c.idx, c.start, c.end, c.text FROM chunks c"
                " JOIN documents d ON d.id = c.document_id JOIN datasets s ON s.id = c.dataset_id"
                f" WHERE c.id IN ({', '.join('?' * len(ids))})",
                tuple(ids),
            ).fetchall()
        return {int(r[0]): tuple(r[1:]) for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
