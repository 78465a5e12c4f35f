"""SQLite with the ``sqlite-vec`` extension loaded: the datasets' one way to open their database.

Python's own ``sqlite3`` is used when it can load extensions; builds that cannot (pyenv's default, some
distributions') use ``pysqlite3`` (the ``pysqlite3-binary`` wheel, a recent SQLite with FTS5), which
pyproject installs on Linux x86_64. Elsewhere, such a build gets one clear error.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlite_vec

try:  # a recent SQLite that loads extensions, where the stdlib build cannot (Linux x86_64 wheels)
    import pysqlite3.dbapi2 as _pysqlite3
except ImportError:
    _pysqlite3 = None

from llmhost.errors import ConfigError

__all__ = ["connect", "sqlite_module"]


def sqlite_module() -> ModuleType:
    """The DB-API module to open datasets with: one whose connections load extensions."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    if _pysqlite3 is None:
        raise ConfigError(
            "datasets need SQLite extension loading (sqlite-vec), which this Python's sqlite3 lacks: "
            "pip install pysqlite3-binary, or use a Python built with --enable-loadable-sqlite-extensions"
        )
    module: ModuleType = _pysqlite3
    return module


def connect(path: Path) -> Any:
    """A connection (WAL, autocommit: transactions are explicit) with sqlite-vec loaded."""
    module = sqlite_module()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = module.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.enable_load_extension(False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db
