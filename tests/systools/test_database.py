"""The database tool group: read-only SQL over a real SQLite file and a real PostgreSQL 15 server started
on loopback for this module; writes refused (by the first check and, behind it, by the database's own
read-only mode), rows and time capped, errors in one line without the connection's secrets."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from llmhost.errors import ConfigError, NotFoundError, ProviderConnectionError, RefusedError, RequestError
from llmhost.systools.database import DatabaseTools, check_read_sql
from llmhost.systools.settings import DatabaseSettings
from tests.postgres import PASSWORD, start_postgres
from tests.support import free_port

WRITES = [
    "INSERT INTO items (id, name) VALUES (9, 'x')",
    "UPDATE items SET name = 'x'",
    "DELETE FROM items",
    "DROP TABLE items",
    "CREATE TABLE other (a int)",
    "  /* a comment first */ delete from items",
]


# ----- the databases ---------------------------------------------------------------------------------
@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, data BLOB);
            CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 2;
            CREATE TABLE numbers (n INTEGER);
            WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 100)
            INSERT INTO numbers SELECT n FROM s;
            """
        )
        conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?)",
            [(1, "apple; pie", 1.5, b"\x00\xff"), (2, "pear", 3.0, None)],
        )
    conn.close()
    return path


def _sqlite(path: Path, **settings: object) -> DatabaseTools:
    return DatabaseTools(DatabaseSettings(connections={"shop": f"sqlite://{path}"}, **settings))


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL 15 cluster on a free loopback port with a small schema, for this module."""
    server = start_postgres()
    try:
        url = server.database_url("postgres")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                """
                CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(6, 2),
                                    added date, data bytea, doc jsonb, tag uuid);
                INSERT INTO items VALUES
                  (1, 'apple', 1.50, '2024-05-01', '\\x00ff', '{"a": [1, 2]}',
                   '12345678-1234-5678-1234-567812345678'),
                  (2, 'pear', 3.00, NULL, NULL, NULL, NULL);
                CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 2;
                CREATE SCHEMA other;
                CREATE TABLE other.things (x int);
                """
            )
        yield url
    finally:
        server.stop()


def _pg(url: str, **settings: object) -> DatabaseTools:
    return DatabaseTools(DatabaseSettings(connections={"pg": url}, **settings))


def _item_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
    assert row is not None
    return int(row[0])


# ----- the first check -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'a;b' AS x;",
        "select 1 -- trailing; comment",
        "  (SELECT 1) UNION (SELECT 2)",
        'SELECT ";" FROM "t;x"',
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SELECT $$a;b$$, $tag$;$tag$",
        "SELECT E'it\\'s; fine'",
        "SELECT 1 /* a /* nested; */ comment */",
    ],
)
def test_one_read_statement_passes_the_first_check(sql: str) -> None:
    assert check_read_sql(sql, "postgresql").strip().startswith(("SELECT", "select", "(", "WITH"))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DELETE FROM items",
        "SELECT 1; COMMIT; DELETE FROM items",
        "SELECT 'x'; DROP TABLE items; --'",
        "SELECT $$x$$; DELETE FROM items",
        "SET default_transaction_read_only = off",
        "COPY items TO PROGRAM 'true'",
        "BEGIN",
        "GRANT ALL ON items TO public",
    ],
)
def test_writes_and_stacked_statements_are_refused_before_running(sql: str) -> None:
    with pytest.raises(RefusedError):
        check_read_sql(sql, "postgresql")


def test_empty_sql_is_a_bad_request() -> None:
    with pytest.raises(RequestError, match="empty"):
        check_read_sql("  ; -- nothing", "sqlite")


# ----- SQLite ----------------------------------------------------------------------------------------
def test_sqlite_query_returns_columns_and_json_safe_rows(sqlite_path: Path) -> None:
    result = _sqlite(sqlite_path).db_query(
        connection="shop", sql="SELECT id, name, price, data FROM items WHERE id >= ? ORDER BY id", params=[1]
    )
    assert result.columns == ["id", "name", "price", "data"]
    assert result.rows == [[1, "apple; pie", 1.5, "AP8="], [2, "pear", 3.0, None]]
    assert (result.row_count, result.truncated) == (2, False)
    assert result.elapsed_ms >= 0
    result.model_dump_json()  # every value is JSON


def test_sqlite_lists_tables_and_views_with_columns(sqlite_path: Path) -> None:
    listing = _sqlite(sqlite_path).db_list_tables(connection="shop")
    tables = {t.name: t for t in listing.tables}
    assert set(tables) == {"items", "cheap", "numbers"}
    assert tables["cheap"].kind == "view"
    items = tables["items"]
    assert [(c.name, c.type, c.nullable) for c in items.columns] == [
        ("id", "INTEGER", True),
        ("name", "TEXT", False),
        ("price", "REAL", True),
        ("data", "BLOB", True),
    ]
    assert not listing.truncated
    assert _sqlite(sqlite_path, max_rows=2).db_list_tables(connection="shop").truncated


def test_sqlite_introspection_pragma_runs(sqlite_path: Path) -> None:
    result = _sqlite(sqlite_path).db_query(connection="shop", sql="PRAGMA table_info(items)")
    assert [row[1] for row in result.rows] == ["id", "name", "price", "data"]


@pytest.mark.parametrize(
    "sql",
    [
        *WRITES,
        "ATTACH DATABASE '/tmp/other.db' AS other",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "VACUUM",
        "SELECT 1; DELETE FROM items",
    ],
)
def test_sqlite_writes_are_refused(sqlite_path: Path, sql: str) -> None:
    with pytest.raises(RefusedError):
        _sqlite(sqlite_path).db_query(connection="shop", sql=sql)
    assert _sqlite(sqlite_path).db_query(connection="shop", sql="SELECT count(*) FROM items").rows == [[2]]


@pytest.mark.parametrize(
    "sql",
    [
        "WITH x AS (SELECT 9, 'x', 0, NULL) INSERT INTO items SELECT * FROM x",
        "WITH x AS (SELECT 1) DELETE FROM items",
        "WITH x AS (SELECT 1) UPDATE items SET name = 'gone'",
    ],
)
def test_sqlite_write_hidden_behind_with_fails_in_the_database(sqlite_path: Path, sql: str) -> None:
    check_read_sql(sql, "sqlite")  # the first check lets it through: the database must stop it
    with pytest.raises(RefusedError, match="read-only"):
        _sqlite(sqlite_path).db_query(connection="shop", sql=sql)
    with sqlite3.connect(sqlite_path) as conn:
        assert conn.execute("SELECT count(*), min(name) FROM items").fetchone() == (2, "apple; pie")
    conn.close()


def test_sqlite_rows_are_capped_by_settings_and_by_the_caller(sqlite_path: Path) -> None:
    tools = _sqlite(sqlite_path, max_rows=10)
    capped = tools.db_query(connection="shop", sql="SELECT n FROM numbers ORDER BY n")
    assert (capped.row_count, capped.truncated, capped.rows[-1]) == (10, True, [10])
    fewer = tools.db_query(connection="shop", sql="SELECT n FROM numbers", max_rows=3)
    assert (fewer.row_count, fewer.truncated) == (3, True)
    more = tools.db_query(connection="shop", sql="SELECT n FROM numbers", max_rows=1000)
    assert more.row_count == 10  # never above the server's cap
    exact = tools.db_query(connection="shop", sql="SELECT n FROM numbers WHERE n <= 10")
    assert (exact.row_count, exact.truncated) == (10, False)


def test_sqlite_query_past_the_time_limit_is_interrupted(sqlite_path: Path) -> None:
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    started = time.monotonic()
    with pytest.raises(RequestError, match="time limit") as caught:
        _sqlite(sqlite_path, timeout="0.3s").db_query(connection="shop", sql=endless)
    assert caught.value.code == "query_timeout"
    assert time.monotonic() - started < 5


def test_sqlite_bad_sql_gives_the_database_message_in_one_line(sqlite_path: Path) -> None:
    with pytest.raises(RequestError) as caught:
        _sqlite(sqlite_path).db_query(connection="shop", sql="SELECT nope FROM items")
    assert "no such column: nope" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_sqlite_file_is_not_found_and_not_created(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        _sqlite(tmp_path / "absent.db").db_query(connection="shop", sql="SELECT 1")
    assert not (tmp_path / "absent.db").exists()


def test_unknown_connection_is_not_found(sqlite_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"'nope'.*shop"):
        _sqlite(sqlite_path).db_query(connection="nope", sql="SELECT 1")
    with pytest.raises(NotFoundError):
        _sqlite(sqlite_path).db_list_tables(connection="nope")


def test_listed_connections_show_kind_and_target_but_no_password(sqlite_path: Path) -> None:
    tools = DatabaseTools(
        DatabaseSettings(
            connections={
                "shop": f"sqlite://{sqlite_path}",
                "pg": f"postgresql://app:{PASSWORD}@db:6432/sales",
            }
        )
    )
    listed = {c.name: c for c in tools.db_list_connections().connections}
    assert (listed["shop"].kind, listed["shop"].target) == ("sqlite", str(sqlite_path))
    assert (listed["pg"].kind, listed["pg"].target) == ("postgresql", "app@db:6432/sales")
    assert PASSWORD not in tools.db_list_connections().model_dump_json()


# ----- PostgreSQL ------------------------------------------------------------------------------------
def test_postgres_query_returns_json_safe_values(postgres_url: str) -> None:
    result = _pg(postgres_url).db_query(
        connection="pg", sql="SELECT * FROM items WHERE id = %s OR name LIKE %s ORDER BY id", params=[1, "p%"]
    )
    assert result.columns == ["id", "name", "price", "added", "data", "doc", "tag"]
    assert result.rows == [
        [1, "apple", "1.50", "2024-05-01", "AP8=", {"a": [1, 2]}, "12345678-1234-5678-1234-567812345678"],
        [2, "pear", "3.00", None, None, None, None],
    ]
    assert (result.row_count, result.truncated) == (2, False)
    result.model_dump_json()


def test_postgres_empty_result_still_names_its_columns(postgres_url: str) -> None:
    result = _pg(postgres_url).db_query(connection="pg", sql="SELECT id, name FROM items WHERE false")
    assert (result.columns, result.rows, result.truncated) == (["id", "name"], [], False)


def test_postgres_percent_signs_need_no_escaping_without_params(postgres_url: str) -> None:
    result = _pg(postgres_url).db_query(connection="pg", sql="SELECT name FROM items WHERE name LIKE 'a%'")
    assert result.rows == [["apple"]]


def test_postgres_lists_tables_views_and_schemas(postgres_url: str) -> None:
    tools = _pg(postgres_url)
    tables = {(t.schema_name, t.name): t for t in tools.db_list_tables(connection="pg").tables}
    assert set(tables) == {("public", "items"), ("public", "cheap"), ("other", "things")}
    assert tables[("public", "cheap")].kind == "view"
    columns = {c.name: (c.type, c.nullable) for c in tables[("public", "items")].columns}
    assert columns["price"] == ("numeric(6,2)", True)
    assert columns["name"] == ("text", False)
    only = tools.db_list_tables(connection="pg", schema_name="other").tables
    assert [(t.name, [c.name for c in t.columns]) for t in only] == [("things", ["x"])]
    assert _pg(postgres_url, max_rows=1).db_list_tables(connection="pg").truncated


@pytest.mark.parametrize("sql", [*WRITES, "SELECT 1; COMMIT; DELETE FROM items", "TRUNCATE items"])
def test_postgres_writes_are_refused(postgres_url: str, sql: str) -> None:
    with pytest.raises(RefusedError):
        _pg(postgres_url).db_query(connection="pg", sql=sql)
    assert _item_count(postgres_url) == 2


@pytest.mark.parametrize(
    "sql",
    [
        "WITH gone AS (DELETE FROM items RETURNING *) SELECT count(*) FROM gone",
        "WITH new AS (INSERT INTO items (id, name) VALUES (9, 'x') RETURNING id) SELECT * FROM new",
        "EXPLAIN ANALYZE DELETE FROM items",
    ],
)
def test_postgres_write_past_the_first_check_fails_in_the_read_only_transaction(
    postgres_url: str, sql: str
) -> None:
    check_read_sql(sql, "postgresql")  # passes the cheap check: the read-only transaction must stop it
    with pytest.raises(RefusedError, match="read-only transaction"):
        _pg(postgres_url).db_query(connection="pg", sql=sql)
    assert _item_count(postgres_url) == 2


def test_postgres_read_only_transaction_cannot_be_turned_read_write(postgres_url: str) -> None:
    sql = "SELECT set_config('transaction_read_only', 'off', true)"
    with pytest.raises(RequestError, match="read-write mode must be set before any query"):
        _pg(postgres_url).db_query(connection="pg", sql=sql)


def test_postgres_takes_one_statement_even_behind_the_first_check(postgres_url: str) -> None:
    tools = _pg(postgres_url)
    target = tools._target("pg")
    with pytest.raises(RequestError, match="multiple commands"):
        tools._run(target, "SELECT 1; COMMIT; DELETE FROM items", None, 10)
    assert _item_count(postgres_url) == 2


def test_postgres_rows_are_capped(postgres_url: str) -> None:
    result = _pg(postgres_url, max_rows=10).db_query(
        connection="pg", sql="SELECT n FROM generate_series(1, 100000) AS n"
    )
    assert (result.row_count, result.truncated) == (10, True)
    assert result.rows == [[n] for n in range(1, 11)]


def test_postgres_query_past_the_time_limit_is_cancelled(postgres_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(RequestError, match="time limit") as caught:
        _pg(postgres_url, timeout="0.5s").db_query(connection="pg", sql="SELECT pg_sleep(10)")
    assert caught.value.code == "query_timeout"
    assert time.monotonic() - started < 5


def test_postgres_bad_sql_gives_the_database_message_without_secrets(postgres_url: str) -> None:
    with pytest.raises(RequestError) as caught:
        _pg(postgres_url).db_query(connection="pg", sql="SELECT nope FROM items")
    message = str(caught.value)
    assert 'column "nope" does not exist' in message
    assert "\n" not in message and PASSWORD not in message and "127.0.0.1" not in message


def test_postgres_unreachable_server_is_a_connection_error_without_the_password() -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(ProviderConnectionError) as caught:
        _pg(url).db_query(connection="pg", sql="SELECT 1")
    assert "cannot connect to database 'pg'" in str(caught.value)
    assert PASSWORD not in str(caught.value) and "\n" not in str(caught.value)


def test_unsupported_connection_url_is_a_config_error_naming_only_the_connection() -> None:
    with pytest.raises(ConfigError, match="'crm'") as caught:
        DatabaseTools(DatabaseSettings(connections={"crm": f"mysql://root:{PASSWORD}@db/crm"}))
    assert PASSWORD not in str(caught.value)
