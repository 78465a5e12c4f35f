"""Stored responses, in the service's database (SQLite or PostgreSQL): what ``GET /v1/responses/{id}``, its
``input_items`` and ``previous_response_id`` read.

Each response keeps its own copy of the conversation it answered: the *context* (the earlier turns a
``previous_response_id`` resolved to: their input and output items, recursively), then its own *input*
items, then its *output* items. Continuing from a response is one read of its rows, and deleting a
response never breaks the responses that continued from it. Instructions are part of the response
object only, never of the conversation: OpenAI does not carry them over to the next turn.

Storage notes: :mod:`llmhost.storage` (SQL both databases speak, migrations tracked in a
``schema_version`` row of its own), one connection opened on first use. Every method blocks: call them
with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Literal

from llmhost.errors import RequestError
from llmhost.storage import DatabaseTarget, LazyStore

__all__ = ["ItemPage", "ResponseStore"]

Item = dict[str, Any]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS responses (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            created_at REAL NOT NULL,
            body TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS response_items (
            response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            source TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (response_id, position)
        )""",
        "CREATE INDEX IF NOT EXISTS response_items_item_id ON response_items (item_id)",
    ),
)

Source = Literal["context", "input", "output"]


class ItemPage:
    """One page of a response's input items, and whether more follow it."""

    __slots__ = ("has_more", "items")

    def __init__(self, items: list[Item], has_more: bool) -> None:
        self.items = items
        self.has_more = has_more


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ResponseStore(LazyStore):
    """Responses and their items, per owner (the principal that created them); thread-safe."""

    def __init__(self, target: DatabaseTarget) -> None:
        super().__init__(target, "responses", MIGRATIONS)

    # ----- responses -----------------------------------------------------------------------------------
    def save(
        self, response: dict[str, Any], context: Sequence[Item], inputs: Sequence[Item], owner: str
    ) -> None:
        """Store ``response`` (its ``output`` holds the output items) with the conversation it answered."""
        rows: list[tuple[Source, Item]] = [
            *(("context", i) for i in context),
            *(("input", i) for i in inputs),
            *(("output", i) for i in response["output"]),
        ]
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO responses (id, owner, created_at, body) VALUES (?, ?, ?, ?)",
                (response["id"], owner, float(response.get("created_at") or time.time()), _dumps(response)),
            )
            tx.executemany(
                "INSERT INTO response_items (response_id, position, item_id, source, body) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (response["id"], n, item["id"], source, _dumps(item))
                    for n, (source, item) in enumerate(rows)
                ],
            )

    def get(self, response_id: str, owner: str) -> dict[str, Any] | None:
        rows = self._query("SELECT body FROM responses WHERE id = ? AND owner = ?", (response_id, owner))
        return json.loads(rows[0][0]) if rows else None

    def delete(self, response_id: str, owner: str) -> bool:
        """Forget a response and its items; False if there was none."""
        with self._transaction() as tx:
            cur = tx.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner))
            return cur.rowcount > 0

    def conversation(self, response_id: str, owner: str) -> list[Item] | None:
        """Everything the next turn continues from: context, input and output items, in order."""
        if not self._query("SELECT 1 FROM responses WHERE id = ? AND owner = ?", (response_id, owner)):
            return None
        rows = self._query(
            "SELECT body FROM response_items WHERE response_id = ? ORDER BY position", (response_id,)
        )
        return [json.loads(body) for (body,) in rows]

    def input_items(
        self,
        response_id: str,
        owner: str,
        *,
        order: Literal["asc", "desc"] = "desc",
        limit: int = 20,
        after: str | None = None,
    ) -> ItemPage | None:
        """The items a response was generated from (earlier turns included), a page at a time; ``after``
        is the id of the last item of the previous page. None if there is no such response."""
        if not self._query("SELECT 1 FROM responses WHERE id = ? AND owner = ?", (response_id, owner)):
            return None
        where = "response_id = ? AND source != 'output'"
        params: list[Any] = [response_id]
        if after is not None:
            found = self._query(
                f"SELECT position FROM response_items WHERE {where} AND item_id = ?", (response_id, after)
            )
            if not found:
                raise RequestError(
                    f"no input item with id '{after}' in response {response_id}", param="after"
                )
            where += " AND position > ?" if order == "asc" else " AND position < ?"
            params.append(found[0][0])
        direction = "ASC" if order == "asc" else "DESC"
        rows = self._query(
            f"SELECT body FROM response_items WHERE {where} ORDER BY position {direction} LIMIT ?",
            (*params, limit + 1),
        )
        items = [json.loads(body) for (body,) in rows[:limit]]
        return ItemPage(items, len(rows) > limit)

    def find_item(self, item_id: str, owner: str) -> Item | None:
        """An item of any stored response of ``owner`` by its id (for ``item_reference`` inputs)."""
        rows = self._query(
            "SELECT i.body FROM response_items i JOIN responses r ON r.id = i.response_id "
            "WHERE i.item_id = ? AND r.owner = ? LIMIT 1",
            (item_id, owner),
        )
        return json.loads(rows[0][0]) if rows else None
