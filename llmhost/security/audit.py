"""The audit log: one hash-chained record per request, on every door, in SQLite.

Each row carries the SHA-256 of its own fields and of the row before it (``prev``), so editing a row
breaks its own hash, and deleting or reordering rows breaks the next row's link: ``llmhost audit verify``
walks the chain and names the first row that does not hold. (Cutting rows off the *end* leaves a valid
shorter chain; keep the head that ``verify`` prints somewhere else and pass it back with ``--head`` to
catch that too.)

Crash safety: a record is one SQLite INSERT (its own transaction), so it is either whole or absent; two
processes sharing the file extend one chain (a stale view of the chain's end makes the INSERT fail on
the primary key, and the record is re-linked). It is committed in the pipeline's ``after``/``on_error``
hooks, before the door sends the response's last part (the JSON body, ``[DONE]``, ``message_stop``, the
final NDJSON object), so a process that dies earlier has not answered the request. WAL with
``synchronous=NORMAL`` survives a process crash; ``audit.synchronous = "full"`` also survives a power
cut, for a few ms per request.

A record holds who (key id and name, never a secret), door, route, target, model, tokens, cost, status,
policy decisions, latency, and SHA-256 hashes of the prompt and the answer; the text itself only with
``audit.store_content``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal

from llmhost.core.stage import Answer, Request, StageBase
from llmhost.core.types import Embeddings, EmbedRequest, Operation, OperationResult, RequestContext, Result
from llmhost.errors import ConflictError, classify
from llmhost.storage import INTEGRITY_ERRORS, Database, DatabaseTarget, migrate

__all__ = ["AuditLog", "AuditRecord", "AuditStage", "Break"]

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One request as the audit log keeps it (``seq``, ``prev`` and ``hash`` are filled when written)."""

    ts: float
    request_id: str
    key_id: str
    principal: str
    door: str
    route: str
    target: str
    model: str
    kind: str  # chat, completion, embedding, count_tokens
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cost: float
    status: int  # the HTTP status the request ended with (200, 4xx, 5xx; 499 when the client went away)
    error: str  # the error's class name, "" when answered
    policy: str  # JSON list of the policy decisions taken on the request
    latency_ms: float
    prompt_sha256: str
    answer_sha256: str
    content: str | None = None  # JSON {"prompt": ..., "answer": ...} only with audit.store_content
    seq: int = 0
    prev: str = ""
    hash: str = ""


_FIELDS = [f.name for f in fields(AuditRecord) if f.name not in ("seq", "hash")]
_REAL_FIELDS = ("ts", "cost", "latency_ms")
_SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    door TEXT NOT NULL,
    route TEXT NOT NULL,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    stream INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    status INTEGER NOT NULL,
    error TEXT NOT NULL,
    policy TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    answer_sha256 TEXT NOT NULL,
    content TEXT,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
)"""
MIGRATIONS = (
    (_SCHEMA,),
    # ``llmhost audit --key`` and the dashboard read one key's records, newest first.
    ("CREATE INDEX IF NOT EXISTS audit_key ON audit (key_id, seq)",),
)
"""The audit table's migrations (append, never edit); version 1 is also what older databases get."""


def record_hash(seq: int, values: dict[str, Any]) -> str:
    """SHA-256 over the row's number and fields (``prev`` included), canonical JSON."""
    body = json.dumps({"seq": seq, **{k: values[k] for k in _FIELDS}}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Break:
    """Where the chain does not hold."""

    seq: int
    reason: str


class AuditLog:
    """The ``audit`` table: append, read, verify."""

    def __init__(self, target: DatabaseTarget, *, synchronous: Literal["normal", "full"] = "normal") -> None:
        self._db = Database(target, synchronous=synchronous)
        try:
            migrate(self._db, "audit", MIGRATIONS)
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        self._end: tuple[int, str] | None = None  # (seq, hash) of the chain's last row, once read
        marks = ", ".join("?" for _ in _FIELDS)
        self._insert = f"INSERT INTO audit (seq, {', '.join(_FIELDS)}, hash) VALUES (?, {marks}, ?)"

    def append(self, record: AuditRecord) -> tuple[int, str]:
        """Write one record at the chain's end; returns its ``seq`` and hash.

        One INSERT, atomic by itself: the chain's end is remembered, and ``seq`` being the primary key
        makes the insert fail if another process (a CLI ``llmhost run``, a second server on the same
        PostgreSQL database) appended meanwhile; then the end is read again and the record re-linked. So
        the chain stays linear across processes and hosts without a read inside a write transaction on
        every request.
        """
        values = {name: getattr(record, name) for name in _FIELDS}
        values["stream"] = int(record.stream)
        for name in _REAL_FIELDS:  # hashed as the REAL column reads back: 0.0, never 0
            values[name] = float(values[name])
        with self._lock:
            for _ in range(1000):
                if self._end is None:
                    last = self._db.query_one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                    self._end = (int(last[0]), str(last[1])) if last else (0, GENESIS)
                seq, prev = self._end[0] + 1, self._end[1]
                values["prev"] = prev
                digest = record_hash(seq, values)
                try:
                    self._db.execute(self._insert, (seq, *(values[k] for k in _FIELDS), digest))
                except INTEGRITY_ERRORS:
                    self._end = None  # someone else wrote row ``seq``: link after theirs
                    continue
                self._end = (seq, digest)
                return seq, digest
        raise ConflictError("could not append to the audit log: it keeps changing under us")

    def rows(
        self, *, after: int = 0, limit: int = 100, newest: bool = False, key_id: str | None = None
    ) -> list[AuditRecord]:
        where, args = "WHERE seq > ?", [after]
        if key_id is not None:
            where += " AND key_id = ?"
            args.append(key_id)  # type: ignore[arg-type]
        order = "DESC" if newest else "ASC"
        sql = f"SELECT seq, {', '.join(_FIELDS)}, hash FROM audit {where} ORDER BY seq {order} LIMIT ?"
        with self._lock:
            found = self._db.query(sql, (*args, limit))
        records = [self._record(r) for r in found]
        return list(reversed(records)) if newest else records

    def _record(self, row: tuple[Any, ...]) -> AuditRecord:
        values = dict(zip(["seq", *_FIELDS, "hash"], row, strict=True))
        values["stream"] = bool(values["stream"])
        for name in ("prompt_tokens", "completion_tokens", "status"):
            values[name] = int(values[name])
        return AuditRecord(**values)

    def _raw(self) -> Iterator[tuple[Any, ...]]:
        # seq is the table's rowid in SQLite, so this is the order rows were stored in.
        yield from self._db.query(f"SELECT seq, {', '.join(_FIELDS)}, hash FROM audit ORDER BY seq")

    def verify(self, head: tuple[int, str] | None = None) -> tuple[int, str, list[Break]]:
        """Walk the chain: (rows checked, head hash, the breaks found; empty when it holds)."""
        breaks: list[Break] = []
        prev, expected_seq, count, last_hash = GENESIS, 1, 0, GENESIS
        with self._lock:
            rows = list(self._raw())
        for row in rows:
            values = dict(zip(["seq", *_FIELDS, "hash"], row, strict=True))
            seq = int(values["seq"])
            count += 1
            if seq != expected_seq:
                what = "missing" if seq > expected_seq else "out of order"
                breaks.append(Break(seq, f"row {expected_seq} is {what} (found {seq} next)"))
            if values["prev"] != prev:
                breaks.append(
                    Break(seq, "does not link to the row before it (a row was deleted, moved or edited)")
                )
            if record_hash(seq, values) != values["hash"]:
                breaks.append(Break(seq, "its content does not match its hash (the row was edited)"))
            prev, last_hash, expected_seq = str(values["hash"]), str(values["hash"]), seq + 1
        if head is not None:
            seq, digest = head
            known = next((r for r in rows if int(r[0]) == seq), None)
            if known is None:
                breaks.append(Break(seq, "the head you kept is gone (rows were cut off the end)"))
            elif known[-1] != digest:
                breaks.append(Break(seq, "the head you kept has a different hash now"))
        return count, last_hash, breaks

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ----- the stage -------------------------------------------------------------------------------------
def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def prompt_text(request: Request) -> str:
    """The request's content as one canonical string (what the prompt hash covers)."""
    if isinstance(request, EmbedRequest):
        return json.dumps([t if isinstance(t, str) else list(t) for t in request.inputs])
    if request.kind == "completion":
        p = request.prompt
        return p if isinstance(p, str) else json.dumps(list(p))
    return json.dumps(
        [
            {
                "role": m.role,
                "content": m.content,
                "tool_calls": [(c.name, c.arguments) for c in m.tool_calls],
            }
            for m in request.messages
        ]
    )


def answer_text(answer: Answer | None) -> str:
    if isinstance(answer, Result):
        return json.dumps(
            [
                {"text": c.text, "tool_calls": [(t.name, t.arguments) for t in c.tool_calls]}
                for c in answer.choices
            ]
        )
    if isinstance(answer, Embeddings):
        return json.dumps(len(answer.vectors))
    return ""


class AuditStage(StageBase):
    """The pipeline's "audit" stage: first in line, so its ``after``/``on_error`` run last and see the
    whole request, refusals by any later stage included."""

    name = "audit"

    def __init__(self, log: AuditLog, *, store_content: bool = False) -> None:
        self.log = log
        self.store_content = store_content

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        ctx.attrs["audit.request"] = request
        return request

    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        self._write(ctx, answer, 200, "")
        return answer

    async def on_error(self, ctx: RequestContext, exc: BaseException) -> None:
        status = 499 if isinstance(exc, GeneratorExit) else classify(exc).status
        if "audit.operation" in ctx.attrs:
            self._write_operation(ctx, None, status, type(exc).__name__)
            return
        self._write(ctx, None, status, type(exc).__name__)

    async def before_operation(self, ctx: RequestContext, op: Operation) -> Operation:
        ctx.attrs["audit.operation"] = op
        return op

    async def after_operation(
        self, ctx: RequestContext, op: Operation, result: OperationResult
    ) -> OperationResult:
        self._write_operation(ctx, result, result.status, "ToolError" if result.error else "")
        return result

    def _write_operation(
        self, ctx: RequestContext, result: OperationResult | None, status: int, error: str
    ) -> None:
        """An operation's record: its name as the kind, its arguments and output hashed (or kept)."""
        op: Operation | None = ctx.attrs.pop("audit.operation", None)
        if op is None:
            return
        output = None if result is None else (result.error or result.output)
        self._append(
            ctx,
            route=op.model,
            target="",
            model=op.model,
            kind=op.name,
            tokens=(0, 0),
            cost=0.0,
            status=status,
            error=error,
            prompt=op.arguments,
            answer=output,
        )

    def _write(self, ctx: RequestContext, answer: Answer | None, status: int, error: str) -> None:
        request: Request | None = ctx.attrs.pop("audit.request", None)
        if request is None:
            return
        attempts = ctx.attempts
        prompt_tokens = sum(a.usage.prompt_tokens for a in attempts)
        completion_tokens = sum(a.usage.completion_tokens for a in attempts)
        if answer is not None:
            prompt_tokens = answer.usage.prompt_tokens
            completion_tokens = answer.usage.completion_tokens if isinstance(answer, Result) else 0
        kind: str = "embedding" if isinstance(request, EmbedRequest) else request.kind
        if ctx.attrs.get("counting"):
            kind = "count_tokens"
        target = ctx.target or (f"{attempts[-1].provider}/{attempts[-1].model}" if attempts else "")
        self._append(
            ctx,
            route=request.model,
            target=target,
            model=attempts[-1].model if attempts else "",
            kind=kind,
            tokens=(prompt_tokens, completion_tokens),
            cost=round(sum(a.cost for a in attempts), 9),
            status=status,
            error=error,
            prompt=prompt_text(request),
            answer=answer_text(answer) if answer is not None else None,
        )

    def _append(
        self,
        ctx: RequestContext,
        *,
        route: str,
        target: str,
        model: str,
        kind: str,
        tokens: tuple[int, int],
        cost: float,
        status: int,
        error: str,
        prompt: str,
        answer: str | None,
    ) -> None:
        """One record: who (the context's principal and door), what, the outcome, and the prompt and
        answer as hashes (the text too with ``store_content``); ``answer`` None: none was given."""
        decisions = ctx.attrs.get("policy.decisions")
        self.log.append(
            AuditRecord(
                ts=time.time(),
                request_id=ctx.request_id,
                key_id=ctx.principal.key_id or "",
                principal=ctx.principal.name,
                door=ctx.door,
                route=route,
                target=target,
                model=model,
                kind=kind,
                stream=ctx.stream,
                prompt_tokens=tokens[0],
                completion_tokens=tokens[1],
                cost=cost,
                status=status,
                error=error,
                policy=json.dumps(decisions) if decisions else "[]",
                latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
                prompt_sha256=_sha(prompt),
                answer_sha256=_sha(answer) if answer is not None else "",
                content=json.dumps({"prompt": prompt, "answer": answer or ""})
                if self.store_content
                else None,
            )
        )
