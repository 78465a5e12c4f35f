"""``GET /v1/models`` and ``GET /v1/models/{model_id}`` in Anthropic's shape, for clients that send
``anthropic-version`` (the official SDKs always do). The OpenAI door owns those paths and hands such
requests here; what is listed is its ``model_cards`` (``id``, ``created``), so both dialects list the
same models.

A model is ``{"type": "model", "id", "display_name", "created_at" (RFC 3339), "lifecycle": "active"}``;
the list is newest first, a page of ``{"data", "has_more", "first_id", "last_id"}``. Query: ``limit``
(1 to 1000, default 20), ``after_id`` (the page after that model) or ``before_id`` (the page before
it), ``lifecycle[]`` (every model here is ``active``). Errors come in Anthropic's envelope.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse
from starlette.datastructures import QueryParams

from llmhost.doors.anthropic.translate import render_error, request_id_header
from llmhost.errors import LLMHostError, ModelNotFoundError, RequestError, classify

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "model_answer",
    "model_info",
    "models_answer",
    "models_page",
    "speaks_anthropic",
]

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000

Card = dict[str, Any]


def speaks_anthropic(headers: Mapping[str, str]) -> bool:
    """Does the request come from an Anthropic client (which sends ``anthropic-version``)?"""
    return "anthropic-version" in headers


def model_info(card: Card) -> dict[str, Any]:
    """One of ``model_cards``' entries as Anthropic's ``ModelInfo``."""
    created = dt.datetime.fromtimestamp(int(card["created"]), dt.UTC)
    return {
        "type": "model",
        "id": card["id"],
        "display_name": card["id"],
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "lifecycle": "active",
    }


def _position(ids: list[str], model_id: str, param: str) -> int:
    try:
        return ids.index(model_id)
    except ValueError:
        raise RequestError(f"{param}: no model {model_id!r} in the list", param=param) from None


def models_page(
    cards: Sequence[Card],
    *,
    limit: int = DEFAULT_LIMIT,
    after_id: str | None = None,
    before_id: str | None = None,
) -> dict[str, Any]:
    """A page of the models, newest first; ``has_more``: more lie beyond it in the direction paged."""
    if not 1 <= limit <= MAX_LIMIT:
        raise RequestError(f"limit: must be between 1 and {MAX_LIMIT}", param="limit")
    if after_id is not None and before_id is not None:
        raise RequestError("give after_id or before_id, not both", param="before_id")
    models = [model_info(c) for c in sorted(cards, key=lambda c: -int(c["created"]))]
    ids = [m["id"] for m in models]
    if before_id is not None:
        end = _position(ids, before_id, "before_id")
        start = max(0, end - limit)
        page, has_more = models[start:end], start > 0
    else:
        start = 0 if after_id is None else _position(ids, after_id, "after_id") + 1
        page, has_more = models[start : start + limit], start + limit < len(models)
    return {
        "data": page,
        "has_more": has_more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


def _limit(query: QueryParams) -> int:
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        return int(raw)
    except ValueError:
        raise RequestError(f"limit: {raw!r} is not an integer", param="limit") from None


def models_answer(cards: Sequence[Card], query: QueryParams) -> JSONResponse:
    """``GET /v1/models``: the page ``query`` asks for, or the error."""
    try:
        lifecycle = query.getlist("lifecycle[]") + query.getlist("lifecycle")
        page = models_page(
            [] if lifecycle and "active" not in lifecycle else cards,
            limit=_limit(query),
            after_id=query.get("after_id"),
            before_id=query.get("before_id"),
        )
    except LLMHostError as exc:
        return render_error(classify(exc))
    return JSONResponse(page, headers=request_id_header())


def model_answer(cards: Sequence[Card], model_id: str) -> JSONResponse:
    """``GET /v1/models/{model_id}``: that model, or ``not_found_error``."""
    for card in cards:
        if card["id"] == model_id:
            return JSONResponse(model_info(card), headers=request_id_header())
    return render_error(classify(ModelNotFoundError(model_id)))
