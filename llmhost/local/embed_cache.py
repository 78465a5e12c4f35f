"""The embedding cache: vectors already computed, keyed by the model file's digest and the input.

Two stores behind one interface (``[embeddings] cache``): :class:`MemoryCache`, an LRU in this process,
and :class:`SqliteCache`, ``<data_dir>/embeddings.db``, which outlives restarts and is shared by the
processes on one data dir. Both keep at most ``cache_entries`` vectors (least recently used go first)
and forget a vector ``cache_ttl`` seconds after it was computed. Vectors are kept as float32 (what
llama.cpp computes), so a hit returns exactly the numbers the miss returned.

The key is the SHA-256 of the model digest and the input (text, or token ids), so a re-pointed name or
a new file never serves another model's vectors.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["CacheStats", "EmbeddingCache", "MemoryCache", "SqliteCache", "cache_key", "make_cache"]

Vector = bytes  # float32, little-endian
Entry = tuple[Vector, int]  # the vector and the input's token count


def cache_key(digest: str, item: str | Sequence[int]) -> bytes:
    h = hashlib.sha256(digest.encode())
    if isinstance(item, str):
        h.update(b"\0s")
        h.update(item.encode("utf-8", errors="surrogatepass"))
    else:
        h.update(b"\0t")
        h.update(np.asarray(item, dtype="<i8").tobytes())
    return h.digest()


def pack(vector: Sequence[float]) -> Vector:
    return np.asarray(vector, dtype="<f4").tobytes()


def unpack(blob: Vector) -> list[float]:
    values: list[float] = np.frombuffer(blob, dtype="<f4").tolist()
    return values


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    entries: int = 0

    @property
    def hit_ratio(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0


class EmbeddingCache(Protocol):
    kind: str

    def get_many(self, keys: Sequence[bytes]) -> dict[int, Entry]: ...

    def put_many(self, items: Sequence[tuple[bytes, Entry]]) -> None: ...

    def stats(self) -> CacheStats: ...

    def close(self) -> None: ...


class MemoryCache:
    """An LRU of at most ``max_entries`` vectors, each valid for ``ttl`` seconds."""

    kind = "memory"

    def __init__(self, max_entries: int, ttl: float) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._items: OrderedDict[bytes, tuple[float, Entry]] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats()

    def get_many(self, keys: Sequence[bytes]) -> dict[int, Entry]:
        now = time.monotonic()
        found: dict[int, Entry] = {}
        with self._lock:
            for i, key in enumerate(keys):
                item = self._items.get(key)
                if item is not None and now - item[0] > self.ttl:
                    del self._items[key]
                    item = None
                if item is None:
                    self._stats.misses += 1
                    continue
                self._items.move_to_end(key)
                found[i] = item[1]
                self._stats.hits += 1
        return found

    def put_many(self, items: Sequence[tuple[bytes, Entry]]) -> None:
        now = time.monotonic()
        with self._lock:
            for key, entry in items:
                self._items[key] = (now, entry)
                self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._stats.hits, self._stats.misses, len(self._items))

    def close(self) -> None:
        with self._lock:
            self._items.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS embedding_cache (
    key      BLOB PRIMARY KEY,
    vector   BLOB NOT NULL,
    n_tokens INTEGER NOT NULL,
    created  REAL NOT NULL,
    used     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS embedding_cache_used ON embedding_cache (used);
"""


class SqliteCache:
    """The same cache in a SQLite file (WAL), so vectors survive a restart."""

    kind = "sqlite"
    _TRIM_EVERY = 256  # puts between trims down to max_entries

    def __init__(self, path: Path, max_entries: int, ttl: float) -> None:
        self.path = path
        self.max_entries = max_entries
        self.ttl = ttl
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._stats = CacheStats()
        self._puts = 0

    def get_many(self, keys: Sequence[bytes]) -> dict[int, Entry]:
        now = time.time()
        found: dict[int, Entry] = {}
        with self._lock:
            rows: dict[bytes, tuple[bytes, int, float]] = {}
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT key, vector, n_tokens, created FROM embedding_cache WHERE key IN ({marks})"
                for key, vector, n_tokens, created in self._db.execute(sql, chunk):
                    rows[bytes(key)] = (bytes(vector), int(n_tokens), float(created))
            fresh = []
            for i, key in enumerate(keys):
                row = rows.get(key)
                if row is None or now - row[2] > self.ttl:
                    self._stats.misses += 1
                    continue
                found[i] = (row[0], row[1])
                fresh.append((now, key))
                self._stats.hits += 1
            if fresh:
                self._db.executemany("UPDATE embedding_cache SET used = ? WHERE key = ?", fresh)
        return found

    def put_many(self, items: Sequence[tuple[bytes, Entry]]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO embedding_cache (key, vector, n_tokens, created, used) "
                "VALUES (?, ?, ?, ?, ?)",
                [(key, vector, n_tokens, now, now) for key, (vector, n_tokens) in items],
            )
            self._puts += len(items)
            if self._puts >= self._TRIM_EVERY:
                self._puts = 0
                self._trim(now)
            self._db.execute("COMMIT")

    def _trim(self, now: float) -> None:
        self._db.execute("DELETE FROM embedding_cache WHERE created < ?", (now - self.ttl,))
        (count,) = self._db.execute("SELECT COUNT(*) FROM embedding_cache").fetchone()
        if count > self.max_entries:
            self._db.execute(
                "DELETE FROM embedding_cache WHERE key IN "
                "(SELECT key FROM embedding_cache ORDER BY used LIMIT ?)",
                (count - self.max_entries,),
            )

    def stats(self) -> CacheStats:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM embedding_cache").fetchone()
            return CacheStats(self._stats.hits, self._stats.misses, int(count))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def make_cache(kind: str, path: Path, max_entries: int, ttl: float) -> EmbeddingCache | None:
    """The cache ``[embeddings] cache`` names, or ``None`` for ``"off"``."""
    if kind == "memory":
        return MemoryCache(max_entries, ttl)
    if kind == "sqlite":
        return SqliteCache(path, max_entries, ttl)
    return None
