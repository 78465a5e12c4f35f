"""Stored chat completions: ``store: true`` on ``POST /v1/chat/completions``, then
``GET /v1/chat/completions`` (``model``, ``metadata[KEY]=VALUE``, ``after``, ``limit``, ``order``),
``GET|POST|DELETE /v1/chat/completions/{id}`` (``POST`` replaces the ``metadata``) and
``GET /v1/chat/completions/{id}/messages``, as OpenAI's API has them.

A completion is kept with the messages it answered (each with an id, ``<completion id>-<n>``) and its
``metadata`` (at most 16 pairs, keys up to 64 characters, values up to 512), in the service's database
(SQLite or PostgreSQL), per owner: a key sees only the completions it stored. A streamed completion is
kept once its stream has ended, as the whole answer its chunks amount to.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict

from llmhost.core.stream import ResultBuilder
from llmhost.core.types import Delta, Principal
from llmhost.doors.common import PRINCIPAL_KEY, door_route, owner_of
from llmhost.doors.openai import translate
from llmhost.errors import NotFoundError, RequestError
from llmhost.storage import DatabaseTarget, LazyStore

__all__ = ["STORE_ATTR", "ChatCompletionStore", "check_metadata", "keep", "keep_stream", "router"]

STORE_ATTR = "chat_completions_store"
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS chat_completions (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            created_at REAL NOT NULL,
            model TEXT NOT NULL,
            metadata TEXT NOT NULL,
            body TEXT NOT NULL,
            messages TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS chat_completions_owner ON chat_completions (owner, created_at)",
    ),
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's bounds on ``metadata`` (a 400 naming it)."""
    if metadata is None:
        return
    if len(metadata) > 16:
        raise RequestError("metadata may have at most 16 keys", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise RequestError(f"metadata key {key[:20]!r}... is longer than 64 characters", param="metadata")
        if len(value) > 512:
            raise RequestError(f"metadata value of {key!r} is longer than 512 characters", param="metadata")


class ChatCompletionStore(LazyStore):
    """Stored completions per owner; thread-safe, every method blocks (call it in a thread)."""

    def __init__(self, target: DatabaseTarget) -> None:
        super().__init__(target, "chat_completions", MIGRATIONS)

    def save(
        self, body: dict[str, Any], messages: list[dict[str, Any]], metadata: dict[str, str], owner: str
    ) -> None:
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO chat_completions (id, owner, created_at, model, metadata, body, messages) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    body["id"],
                    owner,
                    time.time(),  # the order they were kept in (``created`` counts whole seconds)
                    body["model"],
                    _dumps(metadata),
                    _dumps(body),
                    _dumps(messages),
                ),
            )

    def get(self, completion_id: str, owner: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT body, metadata FROM chat_completions WHERE id = ? AND owner = ?", (completion_id, owner)
        )
        return {**json.loads(rows[0][0]), "metadata": json.loads(rows[0][1])} if rows else None

    def messages(self, completion_id: str, owner: str) -> list[dict[str, Any]] | None:
        rows = self._query(
            "SELECT messages FROM chat_completions WHERE id = ? AND owner = ?", (completion_id, owner)
        )
        return json.loads(rows[0][0]) if rows else None

    def update(self, completion_id: str, owner: str, metadata: dict[str, str]) -> bool:
        with self._transaction() as tx:
            cur = tx.execute(
                "UPDATE chat_completions SET metadata = ? WHERE id = ? AND owner = ?",
                (_dumps(metadata), completion_id, owner),
            )
            return cur.rowcount > 0

    def delete(self, completion_id: str, owner: str) -> bool:
        with self._transaction() as tx:
            cur = tx.execute(
                "DELETE FROM chat_completions WHERE id = ? AND owner = ?", (completion_id, owner)
            )
            return cur.rowcount > 0

    def list(
        self, owner: str, *, model: str | None, metadata: dict[str, str], order: Literal["asc", "desc"]
    ) -> list[dict[str, Any]]:
        """The owner's completions in creation order (``order``), filtered by model and metadata."""
        direction = "ASC" if order == "asc" else "DESC"
        sql = "SELECT body, metadata FROM chat_completions WHERE owner = ?"
        params: tuple[Any, ...] = (owner,)
        if model is not None:
            sql, params = sql + " AND model = ?", (*params, model)
        rows = self._query(f"{sql} ORDER BY created_at {direction}, id {direction}", params)
        out = []
        for body, meta in rows:
            kept = json.loads(meta)
            if all(kept.get(k) == v for k, v in metadata.items()):
                out.append({**json.loads(body), "metadata": kept})
        return out


# ----- what the chat route keeps ------------------------------------------------------------------------
def _store_messages(completion_id: str, messages: list[Any]) -> list[dict[str, Any]]:
    """The request's messages as OpenAI lists them: an id each, the text as ``content``, an array's
    parts in ``content_parts``."""
    out = []
    for n, m in enumerate(messages):
        wire = m.model_dump(exclude_none=True) if isinstance(m, BaseModel) else dict(m)
        content = wire.get("content")
        parts = None
        if isinstance(content, list):
            parts = content
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({**wire, "id": f"{completion_id}-{n}", "content": content, "content_parts": parts})
    return out


def _owner(request: Request) -> str:
    principal = request.scope.get(PRINCIPAL_KEY)
    return owner_of(principal if isinstance(principal, Principal) else Principal())


def store_of(request: Request) -> ChatCompletionStore:
    store: ChatCompletionStore | None = getattr(request.app.state, STORE_ATTR, None)
    if store is None:
        service = request.app.state.service
        store = ChatCompletionStore(service.settings.database_for("llmhost.db"))
        setattr(request.app.state, STORE_ATTR, store)
    return store


async def keep(
    request: Request, body: dict[str, Any], messages: list[Any], metadata: dict[str, str] | None
) -> None:
    """Store a whole answer (``store: true``)."""
    store, owner = store_of(request), _owner(request)
    rows = _store_messages(body["id"], messages)
    await asyncio.to_thread(store.save, body, rows, metadata or {}, owner)


async def keep_stream(
    request: Request,
    deltas: AsyncIterator[Delta],
    id_: str,
    model: str,
    created: int,
    messages: list[Any],
    metadata: dict[str, str] | None,
    functions: bool,
) -> AsyncIterator[Delta]:
    """``deltas`` passed on unchanged; once they have all come, the answer they amount to is stored."""
    built = ResultBuilder(id_, model)
    async for delta in deltas:
        built.add(delta)
        yield delta
    result = built.result()
    result.created = created
    await keep(request, translate.chat_response(result, functions), messages, metadata)


# ----- the routes -----------------------------------------------------------------------------------------
@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    store: ChatCompletionStore | None = getattr(app.state, STORE_ATTR, None)
    if store is not None:
        await asyncio.to_thread(store.close)


router = APIRouter(prefix="/v1", route_class=door_route(translate.render_error), lifespan=_lifespan)


class _UpdateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    metadata: dict[str, str] | None


def _not_found(completion_id: str) -> NotFoundError:
    return NotFoundError(
        f"No chat completion found with id '{completion_id}' (only ones created with store: true are kept)",
        param="completion_id",
    )


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise RequestError(f"no item with id '{after}' to list after", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def _listing(request: Request) -> tuple[str | None, int, Literal["asc", "desc"]]:
    query = request.query_params
    limit_text = query.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise RequestError("limit must be between 1 and 100", param="limit")
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise RequestError("order must be 'asc' or 'desc'", param="order")
    return query.get("after"), int(limit_text), "asc" if order == "asc" else "desc"


@router.get("/chat/completions")
async def list_completions(request: Request) -> dict[str, Any]:
    after, limit, order = _listing(request)
    query = request.query_params
    metadata = {
        k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")
    }
    owner = _owner(request)
    items = await asyncio.to_thread(
        store_of(request).list, owner, model=query.get("model"), metadata=metadata, order=order
    )
    return _page(items, after, limit)


@router.get("/chat/completions/{completion_id}")
async def get_completion(completion_id: str, request: Request) -> dict[str, Any]:
    found = await asyncio.to_thread(store_of(request).get, completion_id, _owner(request))
    if found is None:
        raise _not_found(completion_id)
    return found


@router.post("/chat/completions/{completion_id}")
async def update_completion(completion_id: str, body: _UpdateBody, request: Request) -> dict[str, Any]:
    check_metadata(body.metadata)
    store, owner = store_of(request), _owner(request)
    if not await asyncio.to_thread(store.update, completion_id, owner, body.metadata or {}):
        raise _not_found(completion_id)
    found = await asyncio.to_thread(store.get, completion_id, owner)
    assert found is not None
    return found


@router.delete("/chat/completions/{completion_id}")
async def delete_completion(completion_id: str, request: Request) -> dict[str, Any]:
    owner = _owner(request)
    if not await asyncio.to_thread(store_of(request).delete, completion_id, owner):
        raise _not_found(completion_id)
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


@router.get("/chat/completions/{completion_id}/messages")
async def completion_messages(completion_id: str, request: Request) -> dict[str, Any]:
    after, limit, order = _listing(request)
    owner = _owner(request)
    messages = await asyncio.to_thread(store_of(request).messages, completion_id, owner)
    if messages is None:
        raise _not_found(completion_id)
    return _page(messages if order == "asc" else messages[::-1], after, limit)
