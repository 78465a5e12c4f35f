"""``BatchWriter``: rows appended from the request path, written to the database by a thread in batches.

The request path only puts a row on a queue; the thread sleeps a moment after the first row of a batch
(waking for every row cost a busy gateway ~10% of a core in GIL hand-offs), takes up to 500, and writes
them in one transaction. ``flush`` waits until every row so far is in the database; ``close`` writes
what is left and stops the thread. The usage log and the agents' run records use it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from llmhost.storage import DB_ERRORS, Database

__all__ = ["BatchWriter"]

log = logging.getLogger(__name__)

T = TypeVar("T")
BATCH_WAIT_S = 0.05
MAX_BATCH = 500


class BatchWriter(Generic[T]):
    def __init__(
        self,
        connect: Callable[[], Database],
        sql: str,
        row: Callable[[T], Sequence[Any]],
        *,
        name: str,
    ) -> None:
        self._connect = connect
        self._sql = sql
        self._row = row
        self._name = name
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"llmhost-{name}", daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(item)

    def _loop(self) -> None:
        conn = self._connect()
        try:
            while True:
                item = self._queue.get()
                if item is not None:
                    time.sleep(BATCH_WAIT_S)  # let a batch gather, asleep
                batch = [item]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [self._row(r) for r in batch if r is not None]
                if rows:
                    try:
                        conn.executemany(self._sql, rows)  # one transaction
                    except DB_ERRORS:
                        log.exception("could not record %d %s rows", len(rows), self._name)
                with self._idle:
                    self._pending -= len(rows)
                    self._idle.notify_all()
                if None in batch:
                    return
        finally:
            conn.close()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every row put so far is in the database."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending <= 0, timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
