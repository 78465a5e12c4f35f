"""The storage layer on both backends: shared SQL, transactions that roll back, change counters seen
across connections, migrations run once and refused when the database is newer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llmhost.storage import INTEGRITY_ERRORS, Database, SchemaError, add_missing_columns, migrate, redact_url

MIGRATIONS = (
    ("CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, ts REAL)",),
    add_missing_columns("things", {"note": "TEXT NOT NULL DEFAULT ''"}),
)


def test_shared_sql_runs_on_both_backends(db_target: str) -> None:
    with Database(db_target) as db:
        migrate(db, "things", MIGRATIONS)
        with db.transaction() as tx:
            sql = "INSERT INTO things (name, ts) VALUES (?, ?) RETURNING id"
            first = tx.execute(sql, ("a", 1.25)).fetchone()
        db.execute(
            "INSERT INTO things (name, ts) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET ts = excluded.ts",
            ("a", 1734567890.123456789),
        )
        db.execute("INSERT INTO things (name, ts) VALUES (?, ?) ON CONFLICT DO NOTHING", ("a", 0.0))
        assert db.query("SELECT id, name, ts, note FROM things WHERE name LIKE '%a%'") == [
            (first[0], "a", 1734567890.123456789, "")  # REAL keeps a double's precision on PostgreSQL too
        ]
        with pytest.raises(INTEGRITY_ERRORS):
            db.execute("INSERT INTO things (name, ts) VALUES (?, ?)", ("a", 2.0))


def test_a_failed_transaction_leaves_nothing(db_target: str) -> None:
    with Database(db_target) as db:
        migrate(db, "things", MIGRATIONS)
        with pytest.raises(RuntimeError), db.transaction() as tx:
            tx.execute("INSERT INTO things (name, ts) VALUES (?, ?)", ("gone", 1.0))
            raise RuntimeError("stop")
        assert db.query("SELECT name FROM things") == []
        db.executemany("INSERT INTO things (name, ts) VALUES (?, ?)", [("x", 1.0), ("y", 2.0)])
        assert db.query("SELECT name FROM things ORDER BY name") == [("x",), ("y",)]


def test_a_change_counted_on_one_connection_is_seen_on_another(db_target: str) -> None:
    with Database(db_target) as writer, Database(db_target) as reader:
        assert reader.version("keys") == 0
        with writer.transaction() as tx:
            tx.touch("keys")
        with writer.transaction() as tx:
            tx.touch("keys")
        assert reader.version("keys") == 2 and reader.version("agents") == 0


def test_migrations_run_once_and_upgrade_an_older_schema_in_place(db_target: str) -> None:
    with Database(db_target) as db:
        assert migrate(db, "things", MIGRATIONS[:1]) == 0  # the old build
        db.execute("INSERT INTO things (name, ts) VALUES (?, ?)", ("old", 1.0))
        assert migrate(db, "things", MIGRATIONS) == 1  # the new one adds the column, keeps the row
        assert migrate(db, "things", MIGRATIONS) == 2
        assert db.query("SELECT name, note FROM things") == [("old", "")]


def test_two_processes_starting_at_once_migrate_once(db_target: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with Database(db_target) as db:
                migrate(db, "things", MIGRATIONS)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Database(db_target) as db:
        assert db.query("SELECT version FROM schema_version WHERE component = 'things'") == [(2,)]


def test_many_connections_opening_one_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    # SQLite answers "database is locked" at once (no busy wait) to a connection switching a new file to
    # WAL while another is switching it: every Database must still open. 60 fresh files, 6 openers each
    # (the race hit about 1 round in 40 with 4 openers before the retry).
    errors: list[BaseException] = []

    def start(path: Path) -> None:
        try:
            with Database(path) as db:
                migrate(db, "things", MIGRATIONS)
        except BaseException as exc:
            errors.append(exc)

    for round_ in range(60):
        path = tmp_path / f"store{round_}.db"
        threads = [threading.Thread(target=start, args=(path,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_a_database_newer_than_the_code_is_refused(db_target: str) -> None:
    with Database(db_target) as db:
        migrate(db, "things", MIGRATIONS)
        with pytest.raises(SchemaError, match="schema version 2, newer than this llmhost understands"):
            migrate(db, "things", MIGRATIONS[:1])


def test_urls_in_messages_hide_the_password() -> None:
    assert redact_url("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact_url("postgresql://db/x") == "postgresql://db/x"
