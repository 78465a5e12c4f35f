"""The ``database`` tool group: read-only SQL over the connections named in ``[mcp.database]``.

Two guards stand between a query and a write. A cheap check (:func:`check_read_sql`) refuses, before
anything runs, what is not one read statement. The real guard is the database's own read-only mode:
SQLite opens the file with ``mode=ro`` and ``PRAGMA query_only=ON`` (an authorizer also refuses ATTACH
and every pragma but the introspection ones); PostgreSQL runs each query through the extended protocol
(one statement, so no ``COMMIT`` can be smuggled in) inside ``BEGIN READ ONLY`` with a local
``statement_timeout``. So a write that passes the cheap check (one inside a CTE, ``EXPLAIN ANALYZE
INSERT``, a function that writes) still fails, in the database. Use a role with SELECT rights only all
the same: a read-only transaction still lets a superuser call functions such as ``pg_terminate_backend``.
"""

from __future__ import annotations

import base64
import datetime
import math
import re
import sqlite3
import time
from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast
from urllib.parse import quote, unquote, urlsplit

import psycopg
import psycopg.errors
from pydantic import BaseModel, Field, JsonValue

from llmhost.errors import ConfigError, NotFoundError, ProviderConnectionError, RefusedError, RequestError
from llmhost.systools.base import SystemTool, ToolGroup
from llmhost.systools.settings import DatabaseSettings

__all__ = [
    "ColumnInfo",
    "ConnectionInfo",
    "ConnectionList",
    "DatabaseTools",
    "QueryResult",
    "TableInfo",
    "TableList",
    "check_read_sql",
    "json_safe",
]

Dialect = Literal["sqlite", "postgresql"]
Param = str | int | float | bool | None

_FIRST_WORDS: dict[str, frozenset[str]] = {
    "sqlite": frozenset({"select", "with", "values", "explain", "pragma"}),
    "postgresql": frozenset({"select", "with", "values", "explain", "show", "table"}),
}
# SQLite pragmas that only describe the schema (each may also be called as pragma_<name>(...)).
_READ_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo"}
    | {"foreign_key_list", "collation_list", "function_list", "module_list", "pragma_list"}
)
_PRAGMA = re.compile(r"\s*pragma\s+(?:\w+\s*\.\s*)?(\w+)\s*(?:\([^()=]*\))?\s*$", re.IGNORECASE)
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _quoted_end(sql: str, start: int, close: str, backslash: bool) -> int:
    """The index just past the quote that closes a literal opened before ``start`` (doubled quotes and,
    where ``backslash``, backslash escapes stay inside); ``len(sql)`` when it never closes."""
    i = start
    while i < len(sql):
        if backslash and sql[i] == "\\":
            i += 2
            continue
        if sql[i] == close:
            if close != "]" and sql.startswith(close, i + 1):
                i += 2
                continue
            return i + 1
        i += 1
    return len(sql)


def _comment_end(sql: str, start: int, nested: bool) -> int:
    """The index just past the block comment opened at ``start`` (PostgreSQL nests them, SQLite not)."""
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i) and (depth == 0 or nested):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(sql)


def _skeleton(sql: str, dialect: Dialect) -> str:
    """``sql`` with the same length, its comments blanked and its literals and quoted names turned into
    ``x`` runs, so what remains is the statement's own punctuation and keywords."""
    out: list[str] = []
    i, n, pg = 0, len(sql), dialect == "postgresql"
    while i < n:
        ch, end, fill = sql[i], -1, "x"
        if sql.startswith("--", i):
            newline = sql.find("\n", i)
            end, fill = (n if newline < 0 else newline), " "
        elif sql.startswith("/*", i):
            end, fill = _comment_end(sql, i, nested=pg), " "
        elif ch in "'\"" or (not pg and ch in "`["):
            escapes = pg and ch == "'" and i > 0 and sql[i - 1] in "eE"
            end = _quoted_end(sql, i + 1, "]" if ch == "[" else ch, escapes)
        elif (
            pg
            and not (i and (sql[i - 1].isalnum() or sql[i - 1] == "_"))
            and (tag := _DOLLAR_TAG.match(sql, i))
        ):
            close = sql.find(tag.group(), tag.end())  # $tag$ ... $tag$; `$1` and `a$b` are no quotes
            end = n if close < 0 else close + len(tag.group())
        if end < 0:
            out.append(ch)
            i += 1
        else:
            out.append(fill * (end - i))
            i = end
    return "".join(out)


def check_read_sql(sql: str, dialect: Dialect) -> str:
    """The statement to run (trailing semicolons and comments cut) if ``sql`` is one statement that
    starts like a read (SELECT, WITH, VALUES, EXPLAIN; SHOW and TABLE on PostgreSQL; introspection
    PRAGMAs on SQLite); else :class:`RefusedError`, or :class:`RequestError` when it is empty. This is
    the cheap first check only: the database's read-only mode is what stops a write it lets through."""
    skeleton = _skeleton(sql, dialect).rstrip()
    while skeleton.endswith(";"):
        skeleton = skeleton[:-1].rstrip()
    if not skeleton.strip():
        raise RequestError("the SQL is empty", param="sql")
    if ";" in skeleton:
        raise RefusedError("only one SQL statement per query is allowed", code="write_refused")
    word = re.match(r"[\s(]*([A-Za-z]+)", skeleton)
    first = word.group(1).lower() if word else ""
    if first not in _FIRST_WORDS[dialect]:
        allowed = ", ".join(sorted(w.upper() for w in _FIRST_WORDS[dialect]))
        raise RefusedError(
            f"only read statements run here ({allowed}); {first.upper() or 'this'} is refused",
            code="write_refused",
        )
    if first == "pragma":
        pragma = _PRAGMA.match(skeleton)
        if pragma is None or pragma.group(1).lower() not in _READ_PRAGMAS:
            raise RefusedError(
                f"only introspection pragmas run here ({', '.join(sorted(_READ_PRAGMAS))})",
                code="write_refused",
            )
    return sql[: len(skeleton)]


def json_safe(value: object) -> JsonValue:
    """A database value as JSON: bytes as base64 text, decimals, UUIDs and other objects as text, dates
    and times in ISO 8601, non-finite floats as text, arrays and JSON documents converted item by item."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


@dataclass(frozen=True, slots=True)
class _Target:
    """One configured connection; ``url`` holds the credentials and is never shown."""

    name: str
    kind: Dialect
    url: str
    shown: str  # the file, or user@host:port/database: what a caller may see
    password: str | None


def _parse_target(name: str, url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = Path(unquote(url[len("sqlite://") :].split("?", 1)[0]))
        path = Path(str(path)[1:]) if str(path).startswith("/~") else path
        return _Target(name, "sqlite", str(path.expanduser()), str(path.expanduser()), None)
    if parts.scheme in ("postgresql", "postgres"):
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
        user = f"{unquote(parts.username)}@" if parts.username else ""
        password = unquote(parts.password) if parts.password else None
        return _Target(name, "postgresql", url, user + where, password)
    raise ConfigError(f"database connection '{name}': only sqlite:// and postgresql:// URLs are supported")


class ConnectionInfo(BaseModel):
    name: str = Field(description="The name to pass as `connection`.")
    kind: Dialect = Field(description="The database engine, which decides the SQL dialect.")
    target: str = Field(description="The SQLite file, or user@host:port/database (never a password).")


class ConnectionList(BaseModel):
    connections: list[ConnectionInfo] = Field(description="Every configured connection.")


class ColumnInfo(BaseModel):
    name: str = Field(description="Column name.")
    type: str = Field(description="Declared type (SQLite may leave it empty).")
    nullable: bool = Field(description="Whether the column accepts NULL.")


class TableInfo(BaseModel):
    schema_name: str = Field(description="Schema (PostgreSQL) or `main` (SQLite).")
    name: str = Field(description="Table or view name.")
    kind: str = Field(description="table, view, materialized view, foreign table or partitioned table.")
    columns: list[ColumnInfo] = Field(description="Columns in their declared order.")


class TableList(BaseModel):
    connection: str = Field(description="The connection listed.")
    tables: list[TableInfo] = Field(description="Tables and views, ordered by schema and name.")
    truncated: bool = Field(description="True when more tables exist than the row cap lets through.")


class QueryResult(BaseModel):
    connection: str = Field(description="The connection queried.")
    columns: list[str] = Field(description="Result column names, in order.")
    rows: list[list[JsonValue]] = Field(
        description="Rows as lists in column order; bytes are base64, decimals text, dates ISO 8601."
    )
    row_count: int = Field(description="Rows returned here (after the cap).")
    truncated: bool = Field(description="True when the query had more rows than returned.")
    elapsed_ms: float = Field(description="Time spent running the query and fetching its rows.")


_PG_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view"} | {
    "f": "foreign table"
}
_PG_TABLES = """
WITH t AS (
  SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
    AND (%(schema)s::text IS NULL OR n.nspname = %(schema)s::text)
  ORDER BY n.nspname, c.relname LIMIT %(limit)s)
SELECT t.nspname, t.relname, t.relkind, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       NOT a.attnotnull
FROM t LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY t.nspname, t.relname, a.attnum
"""
_Rows = tuple[list[str], list[tuple[Any, ...]], bool]


def _first_line(exc: BaseException) -> str:
    """The database's own message, one line (psycopg's primary message has no LINE/caret lines)."""
    diag = getattr(exc, "diag", None)
    text = (getattr(diag, "message_primary", None) or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DatabaseTools(ToolGroup):
    """Read-only SQL over the configured SQLite files and PostgreSQL servers, capped in rows and time.
    Each query opens its own connection (nothing is held between calls, so no state leaks between
    callers) and closes it when done."""

    name: ClassVar[str] = "database"
    scope: ClassVar[str] = "tools:database"

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._targets = {name: _parse_target(name, url) for name, url in settings.connections.items()}

    def tools(self) -> list[SystemTool]:
        return [
            SystemTool("db_list_connections", self.db_list_connections, "List database connections"),
            SystemTool("db_list_tables", self.db_list_tables, "List tables and columns"),
            SystemTool("db_query", self.db_query, "Run a read-only SQL query"),
        ]

    def db_list_connections(self) -> ConnectionList:
        """List the database connections this server may query: each one's name (pass it as
        `connection`), its kind (sqlite or postgresql, which decides the SQL dialect) and where it
        points. Credentials are never shown."""
        return ConnectionList(
            connections=[
                ConnectionInfo(name=t.name, kind=t.kind, target=t.shown) for t in self._targets.values()
            ]
        )

    def db_list_tables(
        self,
        connection: Annotated[str, Field(description="Connection name, from db_list_connections.")],
        schema_name: Annotated[
            str | None, Field(description="Only this schema (PostgreSQL); all user schemas if omitted.")
        ] = None,
    ) -> TableList:
        """List the tables and views of a connection with their columns, declared types and nullability,
        so you can write a query. PostgreSQL system schemas are left out. At most the row cap of tables
        is returned (`truncated` says when there are more)."""
        target = self._target(connection)
        limit = self._settings.max_rows
        tables: dict[tuple[str, str], TableInfo] = {}
        if target.kind == "postgresql":
            _, rows, _ = self._run(target, _PG_TABLES, {"schema": schema_name, "limit": limit + 1}, None)
            for nsp, rel, kind, col, col_type, nullable in rows:
                table = tables.setdefault(
                    (nsp, rel), TableInfo(schema_name=nsp, name=rel, kind=_PG_KINDS[kind], columns=[])
                )
                if col is not None:
                    table.columns.append(ColumnInfo(name=col, type=col_type, nullable=nullable))
        else:
            sql = (
                "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE "
                "'sqlite\\_%' ESCAPE '\\' ORDER BY name LIMIT ?"
            )
            _, rows, _ = self._run(target, sql, [limit + 1], None)
            for rel, kind in rows:
                quoted = '"' + rel.replace('"', '""') + '"'
                _, cols, _ = self._run(target, f"PRAGMA table_xinfo({quoted})", None, None)
                columns = [ColumnInfo(name=c[1], type=c[2] or "", nullable=not c[3]) for c in cols]
                tables[("main", rel)] = TableInfo(schema_name="main", name=rel, kind=kind, columns=columns)
        listed = list(tables.values())
        return TableList(connection=connection, tables=listed[:limit], truncated=len(listed) > limit)

    def db_query(
        self,
        connection: Annotated[str, Field(description="Connection name, from db_list_connections.")],
        sql: Annotated[
            str,
            Field(
                description=(
                    "One read statement: SELECT, WITH ... SELECT, VALUES, EXPLAIN (SHOW and TABLE on "
                    "PostgreSQL; PRAGMA table_info and other introspection pragmas on SQLite). Writes, "
                    "DDL and multiple statements are refused."
                )
            ),
        ],
        params: Annotated[
            list[Param] | None,
            Field(description="Values bound to the parameter markers: `?` on SQLite, `%s` on PostgreSQL."),
        ] = None,
        max_rows: Annotated[
            int | None, Field(ge=1, description="Return at most this many rows (never above the server cap).")
        ] = None,
    ) -> QueryResult:
        """Run one read-only SQL query on a configured connection and return its columns and rows. The
        database itself runs the query read-only, so any write fails; rows beyond the cap are cut
        (`truncated`) and a query running past the time limit is cancelled. Call db_list_tables first
        to see what exists."""
        target = self._target(connection)
        statement = check_read_sql(sql, target.kind)
        cap = min(max_rows or self._settings.max_rows, self._settings.max_rows)
        started = time.perf_counter()
        columns, rows, truncated = self._run(target, statement, params, cap)
        elapsed = (time.perf_counter() - started) * 1000
        return QueryResult(
            connection=connection,
            columns=columns,
            rows=[[json_safe(v) for v in row] for row in rows],
            row_count=len(rows),
            truncated=truncated,
            elapsed_ms=round(elapsed, 3),
        )

    def _target(self, connection: str) -> _Target:
        target = self._targets.get(connection)
        if target is None:
            known = ", ".join(sorted(self._targets)) or "none are configured"
            raise NotFoundError(f"no database connection named '{connection}' (known: {known})", "connection")
        return target

    def _run(
        self, target: _Target, sql: str, params: Sequence[Param] | Mapping[str, Param] | None, cap: int | None
    ) -> _Rows:
        """Columns, at most ``cap`` rows (all when None) and whether more were left, of one statement."""
        run = self._run_sqlite if target.kind == "sqlite" else self._run_postgres
        return run(target, sql, params, cap)

    def _timeout_error(self, target: _Target) -> RequestError:
        return RequestError(
            f"query on '{target.name}' cancelled: it ran past the {self._settings.timeout:g} s time limit",
            param="sql",
            code="query_timeout",
        )

    def _run_sqlite(
        self, target: _Target, sql: str, params: Sequence[Param] | Mapping[str, Param] | None, cap: int | None
    ) -> _Rows:
        if not Path(target.url).is_file():
            raise NotFoundError(f"the SQLite file of connection '{target.name}' does not exist", "connection")
        timeout = self._settings.timeout
        deadline = time.monotonic() + timeout
        try:
            conn = sqlite3.connect(
                f"file:{quote(target.url)}?mode=ro", uri=True, timeout=timeout, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise ProviderConnectionError(
                f"cannot open database '{target.name}': {_first_line(exc)}",
                provider=f"database:{target.name}",
            ) from exc
        with closing(conn):
            conn.execute("PRAGMA query_only = ON")
            conn.set_authorizer(_sqlite_authorizer)
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            try:
                cursor = conn.execute(sql, params if params is not None else ())
                rows = cursor.fetchall() if cap is None else cursor.fetchmany(cap + 1)
                columns = [d[0] for d in cursor.description or ()]
            except sqlite3.Error as exc:
                raise self._sqlite_error(target, exc, time.monotonic() > deadline) from exc
        truncated = cap is not None and len(rows) > cap
        return columns, rows[:cap] if cap is not None else rows, truncated

    def _sqlite_error(self, target: _Target, exc: sqlite3.Error, late: bool) -> Exception:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_INTERRUPT and late:
            return self._timeout_error(target)
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH):
            return RefusedError(
                f"database '{target.name}' is read-only here: {_first_line(exc)}", code="write_refused"
            )
        if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in str(exc):
            return RefusedError("only one SQL statement per query is allowed", code="write_refused")
        return RequestError(f"database '{target.name}': {_first_line(exc)}", param="sql")

    def _run_postgres(
        self, target: _Target, sql: str, params: Sequence[Param] | Mapping[str, Param] | None, cap: int | None
    ) -> _Rows:
        timeout = self._settings.timeout
        try:
            conn = psycopg.connect(target.url, autocommit=True, connect_timeout=max(2, math.ceil(timeout)))
        except psycopg.Error as exc:
            message = _first_line(exc)
            if target.password:
                message = message.replace(target.password, "***")
            raise ProviderConnectionError(
                f"cannot connect to database '{target.name}': {message}", provider=f"database:{target.name}"
            ) from exc
        with closing(conn):
            try:
                conn.execute("BEGIN READ ONLY")
                conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(timeout * 1000)}ms"])
                with conn.cursor() as cursor:
                    # stream() always takes the extended protocol (one statement only) and, closed
                    # early, cancels the rest of the query on the server.
                    size = 1 if cap is None else min(cap + 1, 1000)
                    stream = cast("Generator[tuple[Any, ...]]", cursor.stream(sql, params, size=size))
                    rows: list[tuple[Any, ...]] = []
                    with closing(stream):
                        for row in stream:
                            if cap is not None and len(rows) == cap:
                                return _columns(cursor), rows, True
                            rows.append(row)
                    return (_columns(cursor) if rows else _describe(conn, sql, params)), rows, False
            except psycopg.errors.QueryCanceled as exc:
                raise self._timeout_error(target) from exc
            except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege) as exc:
                raise RefusedError(
                    f"database '{target.name}' is read-only here: {_first_line(exc)}", code="write_refused"
                ) from exc
            except psycopg.OperationalError as exc:
                raise ProviderConnectionError(
                    f"database '{target.name}' failed: {_first_line(exc)}", provider=f"database:{target.name}"
                ) from exc
            except psycopg.Error as exc:
                raise RequestError(f"database '{target.name}': {_first_line(exc)}", param="sql") from exc


def _columns(cursor: psycopg.Cursor[Any]) -> list[str]:
    return [column.name for column in cursor.description or ()]


def _describe(
    conn: psycopg.Connection[Any], sql: str, params: Sequence[Param] | Mapping[str, Param] | None
) -> list[str]:
    """The column names of a statement, without running it: stream() keeps no description when no
    row comes, so ask the server to describe the statement (parameters inlined, safely quoted)."""
    text = sql if params is None else psycopg.ClientCursor(conn).mogrify(sql, params)
    pgconn = conn.pgconn
    if pgconn.prepare(b"", text.encode(conn.info.encoding)).status != psycopg.pq.ExecStatus.COMMAND_OK:
        return []
    described = pgconn.describe_prepared(b"")
    return [(described.fname(i) or b"").decode(conn.info.encoding) for i in range(described.nfields)]


_SQLITE_DENIED = frozenset({sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH})


def _sqlite_authorizer(action: int, arg1: str | None, *_: str | None) -> int:
    """Refuse ATTACH/DETACH (other files) and pragmas beyond introspection (``query_only = OFF``);
    writes are left to ``mode=ro`` and ``query_only``, the database's own guard."""
    if action in _SQLITE_DENIED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in _READ_PRAGMAS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK
