"""Agents (``<data_dir>/agents.db``), their runs and the feedback on them (``<data_dir>/runs.db``), in
SQLite (WAL), or both in PostgreSQL (``database_url``). The server keeps the agents in memory and
reloads them when another process changed them (the ``agents`` change counter, see
:mod:`llmhost.storage`); run records, written all the time, live apart and never set that off.

A *run* is one inference request as the "agents" stage saw it: every request gets one (with an empty
``agent`` when it named a model), so the scorecards of agents and of models read one table. Runs are
written by a batching thread (the request never waits for SQLite); ``flush`` waits for them.
Feedback is one row per (run, rater): a rater who reports again replaces their earlier verdict. With a
retention (``agents.runs_retention``), recording runs also deletes, at most once an hour and off the
request's path, the runs older than it and their feedback.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmhost.apps.agents.spec import AgentSpec
from llmhost.batching import BatchWriter
from llmhost.errors import ConflictError, NotFoundError, RequestError
from llmhost.storage import DB_ERRORS, INTEGRITY_ERRORS, Database, DatabaseTarget, migrate

__all__ = ["AgentRecord", "AgentStore", "Feedback", "RunRecord"]

log = logging.getLogger(__name__)

AGENT_MIGRATIONS = (
    (
        """CREATE TABLE IF NOT EXISTS agents (
    name    TEXT PRIMARY KEY,
    spec    TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
)""",
    ),
)
RUN_MIGRATIONS = (
    (
        """CREATE TABLE IF NOT EXISTS runs (
    id                TEXT PRIMARY KEY,
    agent             TEXT NOT NULL,
    model             TEXT NOT NULL,
    door              TEXT NOT NULL,
    principal         TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    created           REAL NOT NULL,
    status            TEXT NOT NULL,
    error             TEXT NOT NULL,
    latency_ms        REAL NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost              REAL NOT NULL,
    stream            INTEGER NOT NULL,
    steps             TEXT NOT NULL,
    tool_calls        TEXT NOT NULL,
    retrieved         TEXT NOT NULL,
    policy            TEXT NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS runs_agent ON runs (agent, created)",
        "CREATE INDEX IF NOT EXISTS runs_model ON runs (model, created)",
        """CREATE TABLE IF NOT EXISTS feedback (
    run_id  TEXT NOT NULL,
    rater   TEXT NOT NULL,
    thumbs  TEXT,
    rating  INTEGER,
    comment TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, rater)
)""",
    ),
)
_RUN_COLUMNS = (
    "id, agent, model, door, principal, key_id, created, status, error, latency_ms, prompt_tokens, "
    "completion_tokens, cost, stream, steps, tool_calls, retrieved, policy"
)
_JSON_FIELDS = ("steps", "tool_calls", "retrieved", "policy")


@dataclass(frozen=True, slots=True)
class AgentRecord:
    spec: AgentSpec
    created: float
    updated: float

    def as_dict(self) -> dict[str, Any]:
        return {"object": "agent", **self.spec.model_dump(), "created": self.created, "updated": self.updated}


@dataclass(slots=True)
class RunRecord:
    """One request: who, which agent and model, how it went, and (for agents) what the loop did."""

    id: str
    agent: str  # "" for a request that named a model
    model: str  # the model or route the request was answered on
    door: str
    principal: str
    key_id: str
    created: float
    status: str  # "ok" or the error's kind
    error: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    stream: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    policy: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> tuple[Any, ...]:
        values = asdict(self)
        for name in _JSON_FIELDS:
            values[name] = json.dumps(values[name], ensure_ascii=False)
        values["stream"] = int(self.stream)
        return tuple(values[c.strip()] for c in _RUN_COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class Feedback:
    run_id: str
    rater: str
    thumbs: str | None
    rating: int | None
    comment: str
    created: float


PRUNE_EVERY_S = 3600.0  # how often recording runs also deletes the ones past the retention


class AgentStore:
    def __init__(
        self,
        target: DatabaseTarget,
        runs_target: DatabaseTarget,
        *,
        runs_retention: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.runs_target = runs_target
        # Runs (and their feedback) older than this many seconds are deleted; None keeps them all.
        self.runs_retention = runs_retention
        self._clock = clock
        self._pruned_at = -math.inf
        self._db = Database(target)
        self._runs = Database(runs_target)
        try:
            migrate(self._db, "agents", AGENT_MIGRATIONS)
            migrate(self._runs, "runs", RUN_MIGRATIONS)
        except BaseException:
            self._db.close()
            self._runs.close()
            raise
        self._lock = threading.Lock()
        updates = ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _RUN_COLUMNS.split(",")[1:])
        sql = (
            f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 18)})"
            f" ON CONFLICT (id) DO UPDATE SET {updates}"
        )
        self._writer: BatchWriter[RunRecord] = BatchWriter(
            lambda: Database(self.runs_target), sql, RunRecord.row, name="runs"
        )

    def version(self) -> int:
        """The agents' change counter: it moves whenever any process saved or deleted an agent."""
        return self._db.version("agents")

    # ----- agents ------------------------------------------------------------------------------------
    def create(self, spec: AgentSpec) -> AgentRecord:
        now = time.time()
        with self._lock:
            try:
                with self._db.transaction() as tx:
                    tx.execute(
                        "INSERT INTO agents (name, spec, created, updated) VALUES (?, ?, ?, ?)",
                        (spec.name, spec.model_dump_json(), now, now),
                    )
                    tx.touch("agents")
            except INTEGRITY_ERRORS:
                raise ConflictError(f"an agent named {spec.name!r} already exists") from None
        return AgentRecord(spec, now, now)

    def replace(self, spec: AgentSpec) -> AgentRecord:
        old = self.get(spec.name)
        now = time.time()
        with self._lock, self._db.transaction() as tx:
            tx.execute(
                "UPDATE agents SET spec = ?, updated = ? WHERE name = ?",
                (spec.model_dump_json(), now, spec.name),
            )
            tx.touch("agents")
        return AgentRecord(spec, old.created, now)

    def find(self, name: str) -> AgentRecord | None:
        with self._lock:
            row = self._db.query_one("SELECT spec, created, updated FROM agents WHERE name = ?", (name,))
        if row is None:
            return None
        return AgentRecord(AgentSpec.model_validate_json(row[0]), float(row[1]), float(row[2]))

    def get(self, name: str) -> AgentRecord:
        found = self.find(name)
        if found is None:
            raise NotFoundError(f"no agent named {name!r}", param="name", code="agent_not_found")
        return found

    def all(self) -> list[AgentRecord]:
        with self._lock:
            rows = self._db.query("SELECT spec, created, updated FROM agents ORDER BY name")
        return [AgentRecord(AgentSpec.model_validate_json(r[0]), float(r[1]), float(r[2])) for r in rows]

    def names(self) -> set[str]:
        with self._lock:
            return {str(r[0]) for r in self._db.query("SELECT name FROM agents")}

    def delete(self, name: str) -> None:
        with self._lock, self._db.transaction() as tx:
            gone = tx.execute("DELETE FROM agents WHERE name = ?", (name,)).rowcount
            tx.touch("agents")
        if not gone:
            raise NotFoundError(f"no agent named {name!r}", param="name", code="agent_not_found")

    # ----- runs --------------------------------------------------------------------------------------
    def record(self, run: RunRecord) -> None:
        self._writer.put(run)
        now = self._clock()
        if self.runs_retention is not None and now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            threading.Thread(target=self._prune_quietly, name="runs-prune", daemon=True).start()

    def prune(self, older_than: float) -> int:
        """Delete the runs recorded more than ``older_than`` seconds ago, and their feedback, in one
        transaction; the number of runs deleted."""
        cutoff = self._clock() - older_than
        with self._runs.transaction() as tx:
            tx.execute(
                "DELETE FROM feedback WHERE run_id IN (SELECT id FROM runs WHERE created < ?)", (cutoff,)
            )
            return int(tx.execute("DELETE FROM runs WHERE created < ?", (cutoff,)).rowcount)

    def _prune_quietly(self) -> None:
        assert self.runs_retention is not None
        try:
            gone = self.prune(self.runs_retention)
        except DB_ERRORS as exc:  # the next hour tries again; recording runs goes on
            log.warning("could not delete old runs from %s: %s", self._runs.label, exc)
            return
        if gone:
            log.info("deleted %d runs older than the retention (%.0f s)", gone, self.runs_retention)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every recorded run is in the database."""
        self._writer.flush(timeout)

    def runs(
        self, *, agent: str | None = None, model: str | None = None, since: float = 0.0, limit: int = 1000
    ) -> list[RunRecord]:
        """Runs newest first, of one agent (``agent``) or answered on one model, since a time."""
        where: list[str] = ["created >= ?"]
        args: list[Any] = [since]
        if agent is not None:
            where.append("agent = ?")
            args.append(agent)
        if model is not None:
            where.append("model = ?")
            args.append(model)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)} ORDER BY created DESC LIMIT ?"
        with self._lock:
            rows = self._runs.query(sql, (*args, limit))
        return [_run(r) for r in rows]

    def run(self, run_id: str) -> RunRecord:
        with self._lock:
            row = self._runs.query_one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise NotFoundError(f"no run {run_id!r}", param="run_id", code="run_not_found")
        return _run(row)

    # ----- feedback ----------------------------------------------------------------------------------
    def add_feedback(self, fb: Feedback) -> None:
        if fb.thumbs is None and fb.rating is None:
            raise RequestError("feedback needs thumbs or a rating", param="thumbs")
        with self._lock:
            self._runs.execute(
                "INSERT INTO feedback (run_id, rater, thumbs, rating, comment, created)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, rater) DO UPDATE SET"
                " thumbs = excluded.thumbs, rating = excluded.rating, comment = excluded.comment,"
                " created = excluded.created",
                (fb.run_id, fb.rater, fb.thumbs, fb.rating, fb.comment, fb.created),
            )

    def feedback(self, run_ids: list[str]) -> dict[str, list[Feedback]]:
        """The feedback on each of ``run_ids``."""
        found: dict[str, list[Feedback]] = {}
        with self._lock:
            for start in range(0, len(run_ids), 500):
                part = run_ids[start : start + 500]
                rows = self._runs.query(
                    "SELECT run_id, rater, thumbs, rating, comment, created FROM feedback"
                    f" WHERE run_id IN ({', '.join('?' * len(part))})",
                    part,
                )
                for r in rows:
                    found.setdefault(str(r[0]), []).append(Feedback(*r))
        return found

    def close(self) -> None:
        self._writer.close()
        with self._lock:
            self._db.close()
            self._runs.close()


def _run(row: tuple[Any, ...]) -> RunRecord:
    names = [c.strip() for c in _RUN_COLUMNS.split(",")]
    values = dict(zip(names, row, strict=True))
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name])
    values["stream"] = bool(values["stream"])
    return RunRecord(**values)
