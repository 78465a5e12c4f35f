"""Schema migrations per component, in place, on SQLite and PostgreSQL alike.

Each store owns a tuple of migrations; entry ``i`` takes its tables from version ``i`` to ``i + 1``. A
migration is a tuple of SQL statements (shared dialect, see :mod:`llmhost.storage.db`) or a function of
the open transaction for what SQL alone cannot say ("add this column if an old build did not"). Append,
never edit a released one: a database records the version it reached in ``schema_version`` (one row per
component, since several components may share one database), and on opening runs what it lacks, in one
transaction that also holds the schema lock, so two processes starting at once migrate
once. A database newer than the code is refused rather than written with the wrong shape.

Databases made before a component tracked its version (its tables exist, no ``schema_version`` row) are
brought in by the first migration itself: it is written with ``IF NOT EXISTS`` and column checks, so
applying it to such a database changes only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llmhost.errors import ConfigError
from llmhost.storage.db import DB_ERRORS, SCHEMA_LOCK, Database, Transaction

__all__ = ["Migration", "SchemaError", "add_missing_columns", "migrate"]

Migration = Sequence[str] | Callable[[Transaction], None]


class SchemaError(ConfigError):
    """The database's schema is newer than this llmhost, or a migration failed."""


_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)


def migrate(db: Database, component: str, migrations: Sequence[Migration]) -> int:
    """Bring ``component``'s tables in ``db`` up to ``len(migrations)``; returns the version it had."""
    target = len(migrations)
    try:  # the usual case, without a write lock: already current (many processes open stores at once)
        row = db.query_one("SELECT version FROM schema_version WHERE component = ?", (component,))
    except DB_ERRORS:
        row = None  # no schema_version table yet
    if row is not None and int(row[0]) == target:
        return target
    with db.transaction() as tx:
        tx.lock(SCHEMA_LOCK)
        tx.execute(_VERSION_DDL)
        row = tx.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
        current = 0 if row is None else int(row[0])
        if current > target:
            raise SchemaError(
                f"the {component} tables in {db.label} have schema version {current}, newer than this "
                f"llmhost understands ({target}); upgrade llmhost"
            )
        for step in migrations[current:]:
            if callable(step):
                step(tx)
            else:
                for statement in step:
                    tx.execute(statement)
        if current != target:
            tx.execute(
                "INSERT INTO schema_version (component, version) VALUES (?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, target),
            )
    return current


def add_missing_columns(table: str, columns: dict[str, str]) -> Callable[[Transaction], None]:
    """A migration step: ``ALTER TABLE table ADD COLUMN`` for each of ``columns`` (name -> type and
    default) that the table lacks (tables made by builds before the column existed)."""

    def step(tx: Transaction) -> None:
        have = tx.columns(table)
        for name, ddl in columns.items():
            if name not in have:
                tx.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")

    return step
