"""Usage and cost accounting: one row per request in SQLite, summaries by key/model/provider/day.

Rows are written by a background thread in small batches, so the request path only appends to a queue.
"""

from __future__ import annotations

import datetime as dt
import operator
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from llmhost.batching import BatchWriter
from llmhost.core.stage import Answer, StageBase
from llmhost.core.types import RequestContext

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
_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
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
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
"""
_GROUP_EXPR = {
    "model": "model",
    "provider": "provider",
    "target": "provider || '/' || target_model",
    "key": "COALESCE(api_key, '-')",
    "day": "date(ts, 'unixepoch')",
    "door": "door",
}
# Columns added after the first release, for databases created before them.
_ADDED_COLUMNS = {
    "door": "ALTER TABLE usage ADD COLUMN door TEXT NOT NULL DEFAULT ''",
    "principal": "ALTER TABLE usage ADD COLUMN principal TEXT NOT NULL DEFAULT ''",
}


class UsageStore:
    """Append-only usage log with a batching writer thread."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
            for column, ddl in _ADDED_COLUMNS.items():
                if column not in have:
                    conn.execute(ddl)
        sql = f"INSERT INTO usage ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
        self._writer: BatchWriter[UsageRecord] = BatchWriter(self._connect, sql, _row, name="usage")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def record(self, rec: UsageRecord) -> None:
        self._writer.put(rec)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every recorded row is in the database."""
        self._writer.flush(timeout)

    def summary(self, group_by: GroupBy = "model", since: float | None = None) -> list[dict[str, Any]]:
        """Requests, tokens, cost and latency per group, newest data included."""
        expr = _GROUP_EXPR[group_by]
        where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
        sql = (
            f"SELECT {expr} AS grp, COUNT(*), SUM(status = 'ok'), SUM(prompt_tokens), SUM(completion_tokens),"
            f" SUM(cached_tokens), SUM(cost), AVG(latency_ms) FROM usage {where} GROUP BY grp ORDER BY grp"
        )
        with self._connect() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [
            {
                group_by: r[0],
                "requests": r[1],
                "ok": r[2] or 0,
                "prompt_tokens": r[3] or 0,
                "completion_tokens": r[4] or 0,
                "cached_tokens": r[5] or 0,
                "cost": round(r[6] or 0.0, 6),
                "avg_latency_ms": round(r[7] or 0.0, 1),
            }
            for r in rows
        ]

    def spent(self, key_id: str) -> float:
        """USD a key has spent, every recorded row included (waits for the writer's queue first)."""
        self.flush()
        with self._connect() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(cost), 0) FROM usage WHERE api_key = ?", (key_id,)
            ).fetchone()
        return float(row[0])

    def close(self) -> None:
        self._writer.close()


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
