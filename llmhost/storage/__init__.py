"""Storage for llmhost's stores: one connection type over SQLite or PostgreSQL, and in-place migrations."""

from llmhost.storage.db import (
    DB_ERRORS,
    INTEGRITY_ERRORS,
    Database,
    DatabaseTarget,
    Transaction,
    open_database,
    redact_url,
)
from llmhost.storage.lazy import LazyStore
from llmhost.storage.migrate import Migration, SchemaError, add_missing_columns, migrate

__all__ = [
    "DB_ERRORS",
    "INTEGRITY_ERRORS",
    "Database",
    "DatabaseTarget",
    "LazyStore",
    "Migration",
    "SchemaError",
    "Transaction",
    "add_missing_columns",
    "migrate",
    "open_database",
    "redact_url",
]
