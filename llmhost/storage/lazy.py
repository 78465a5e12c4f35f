"""``LazyStore``: what a store over one database connection shares -- the connection opened, and the
store's tables migrated, on first use; one lock around every statement; closing."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from llmhost.storage.db import Database, DatabaseTarget, Transaction
from llmhost.storage.migrate import Migration, migrate

__all__ = ["LazyStore"]


class LazyStore:
    """A thread-safe store on ``target`` whose ``migrations`` are tracked under ``component``. Every
    method blocks: call them with ``asyncio.to_thread``."""

    def __init__(self, target: DatabaseTarget, component: str, migrations: Sequence[Migration]) -> None:
        self.target = target
        self._component = component
        self._migrations = migrations
        self._lock = threading.Lock()
        self._db: Database | None = None

    def _database(self) -> Database:
        if self._db is None:
            db = Database(self.target)
            try:
                migrate(db, self._component, self._migrations)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        with self._lock, self._database().transaction() as tx:
            yield tx

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._database().query(sql, params)

    @property
    def is_open(self) -> bool:
        """Whether a connection is open now (one opens on first use)."""
        return self._db is not None

    def close(self) -> None:
        """Close the connection (a later call opens a new one). Idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
