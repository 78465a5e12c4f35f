"""Usage and cost accounting: one row per request (SQLite or PostgreSQL), summaries by key/model/day.

Rows are written by a background thread in small batches, so the request path only appends to a queue.
"""

from __future__ import annotations

import datetime as dt
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from llmhost.batching import BatchWriter
from llmhost.core.stage import Answer, StageBase
from llmhost.core.types import RequestContext
from llmhost.storage import Database, DatabaseTarget, add_missing_columns, migrate

__all__ = ["UsageRecord", "UsageStage", "UsageStore", "cost_of", "since_days"]

GroupBy = Literal["model", "provider", "day", "key", "target", "door"]


def cost_of(prompt_tokens: int, completion_tokens: int, input_price: float, output_price: float) -> float:
    """Cost with prices per million tokens."""
    return (prompt_tokens * input_price + completion_tokens * output_price) / 1_000_000


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request as it was answered."""

    ts: float
    model: str  # the public name the client asked for
    provider: str
    target_model: str
    tier: int  # index of the target that answered (0 = first choice)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_ms: float
    cost: float
    status: str  # "ok" or an error class name
    api_key: str | None = None  # key id (never the secret)
    stream: bool = False
    door: str = ""  # the dialect the request came in through: openai, anthropic, ollama, responses, cli
    principal: str = ""  # who asked (the principal's name)


_COLUMNS = [f.name for f in fields(UsageRecord)]
_row = operator.attrgetter(*_COLUMNS)  # a record's values in column order (astuple deep-copies: slow)
_USAGE_V1 = (
    """CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    target_model TEXT NOT NULL,
    tier INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    cost REAL NOT NULL,
    status TEXT NOT NULL,
    api_key TEXT,
    stream INTEGER NOT NULL,
    door TEXT NOT NULL DEFAULT '',
    principal TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts)",
)
# Append, never edit. Version 1 is also what databases made before versions were tracked get: the table
# as it was then, plus the columns added since.
MIGRATIONS = (
    _USAGE_V1,
    add_missing_columns(
        "usage", {"door": "TEXT NOT NULL DEFAULT ''", "principal": "TEXT NOT NULL DEFAULT ''"}
    ),
    # A key's spend is summed when its budget is first checked, on every instance that serves it.
    ("CREATE INDEX IF NOT EXISTS usage_api_key ON usage (api_key)",),
)
_GROUP_EXPR = {
    "model": "model",
    "provider": "provider",
    "target": "provider || '/' || target_model",
    "key": "COALESCE(api_key, '-')",
    "day": {
        "sqlite": "date(ts, 'unixepoch')",
        "postgresql": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    },
    "door": "door",
}


class UsageStore:
    """Append-only usage log with a batching writer thread."""

    def __init__(self, target: DatabaseTarget) -> None:
        self.target = target
        self._db = Database(target)  # reads; the writer thread has a connection of its own
        try:
            migrate(self._db, "usage", MIGRATIONS)
        except BaseException:
            self._db.close()
            raise
        sql = f"INSERT INTO usage ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
        self._writer: BatchWriter[UsageRecord] = BatchWriter(self._connect, sql, _row, name="usage")
        self.listeners: list[Callable[[UsageRecord], object]] = []
        """Called with every record as it is recorded (the Prometheus totals of this process)."""

    def _connect(self) -> Database:
        return Database(self.target)

    def record(self, rec: UsageRecord) -> None:
        self._writer.put(rec)
        for listener in self.listeners:
            listener(rec)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every recorded row is in the database."""
        self._writer.flush(timeout)

    def summary(self, group_by: GroupBy = "model", since: float | None = None) -> list[dict[str, Any]]:
        """Requests, tokens, cost and latency per group, newest data included."""
        expr = _GROUP_EXPR[group_by]
        if isinstance(expr, dict):
            expr = expr[self._db.dialect]
        where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
        sql = (
            f"SELECT {expr} AS grp, COUNT(*), SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END),"
            f" SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(cost), AVG(latency_ms)"
            f" FROM usage {where} GROUP BY grp ORDER BY grp"
        )
        rows = self._db.query(sql, args)
        return [
            {
                group_by: r[0],
                # int()/float(): PostgreSQL's SUM over BIGINT is a NUMERIC (Decimal in Python).
                "requests": int(r[1]),
                "ok": int(r[2] or 0),
                "prompt_tokens": int(r[3] or 0),
                "completion_tokens": int(r[4] or 0),
                "cached_tokens": int(r[5] or 0),
                "cost": round(float(r[6] or 0.0), 6),
                "avg_latency_ms": round(float(r[7] or 0.0), 1),
            }
            for r in rows
        ]

    def spent(self, key_id: str) -> float:
        """USD a key has spent, every recorded row included (waits for the writer's queue first)."""
        self.flush()
        row = self._db.query_one("SELECT COALESCE(SUM(cost), 0) FROM usage WHERE api_key = ?", (key_id,))
        return 0.0 if row is None else float(row[0])

    def close(self) -> None:
        self._writer.close()
        self._db.close()


def since_days(days: float) -> float:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).timestamp()


class UsageStage(StageBase):
    """The pipeline's "usage" stage: one usage row per call to a target, with who asked and how."""

    name = "usage"

    def __init__(self, store: UsageStore) -> None:
        self.store = store

    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        self._write(ctx)
        return answer

    async def on_error(self, ctx: RequestContext, exc: BaseException) -> None:
        self._write(ctx)

    def _write(self, ctx: RequestContext) -> None:
        now = time.time()
        for a in ctx.attempts:
            self.store.record(
                UsageRecord(
                    ts=now,
                    model=a.route,
                    provider=a.provider,
                    target_model=a.model,
                    tier=a.tier,
                    prompt_tokens=a.usage.prompt_tokens,
                    completion_tokens=a.usage.completion_tokens,
                    cached_tokens=a.usage.cached_tokens,
                    latency_ms=a.latency_s * 1000,
                    cost=a.cost,
                    status=a.status,
                    api_key=ctx.principal.key_id,
                    stream=ctx.stream,
                    door=ctx.door,
                    principal=ctx.principal.name,
                )
            )
