"""The Responses API routes: parse, resolve the stored conversation, run the pipeline, answer JSON or
SSE, store the response.

    POST   /v1/responses                        create (``stream`` for SSE events)
    GET    /v1/responses/{id}                   a stored response
    DELETE /v1/responses/{id}                   forget it
    GET    /v1/responses/{id}/input_items       the items it answered, a page at a time
    POST   /v1/responses/{id}/cancel            only background responses can be cancelled: none here
    POST   /v1/responses/input_tokens           count a request's input tokens without generating
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llmhost.doors.common import context_for, door_route, owner_of, pipeline_of
from llmhost.doors.responses import protocol as wire
from llmhost.doors.responses import translate
from llmhost.doors.responses.events import ResponseStream
from llmhost.doors.responses.store import ResponseStore
from llmhost.doors.responses.translate import Item
from llmhost.errors import ErrorInfo, RequestError

__all__ = ["STORE_ATTR", "router", "store_of"]

STORE_ATTR = "responses_store"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    store: ResponseStore | None = getattr(app.state, STORE_ATTR, None)
    if store is not None:
        await asyncio.to_thread(store.close)


router = APIRouter(prefix="/v1", route_class=door_route(translate.render_error), lifespan=_lifespan)


def store_of(request: Request) -> ResponseStore:
    store: ResponseStore = getattr(request.app.state, STORE_ATTR)
    return store


def _not_found(message: str, param: str, code: str) -> JSONResponse:
    return translate.render_error(ErrorInfo(404, "not_found", message, param, code))


def _response_not_found(response_id: str) -> JSONResponse:
    return _not_found(f"Response with id '{response_id}' not found.", "response_id", "not_found")


class _Conversation:
    """The turns a request continues from (``context``) and its own input items, resolved."""

    def __init__(self, context: list[Item], inputs: list[Item]) -> None:
        self.context = context
        self.inputs = inputs

    @property
    def items(self) -> list[Item]:
        return [*self.context, *self.inputs]


async def _conversation(
    store: ResponseStore, owner: str, body: wire.ResponseCreateRequest | wire.InputTokensRequest
) -> _Conversation | JSONResponse:
    """Earlier turns from ``previous_response_id``, ``item_reference`` inputs replaced by the stored
    items they name; a 404 response when either is unknown."""
    inputs = translate.input_items(body.input)
    context: list[Item] = []
    if body.previous_response_id:
        found = await asyncio.to_thread(store.conversation, body.previous_response_id, owner)
        if found is None:
            return _not_found(
                f"Previous response with id '{body.previous_response_id}' not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        context = found
    for n, item in enumerate(inputs):
        if item["type"] == "item_reference":
            stored = await asyncio.to_thread(store.find_item, item["id"], owner)
            if stored is None:
                return _not_found(f"Item with id '{item['id']}' not found.", "input", "item_not_found")
            inputs[n] = stored
    translate.check_conversation(context, inputs)
    return _Conversation(context, inputs)


@router.post("/responses", response_model=None)
async def create_response(
    body: wire.ResponseCreateRequest, request: Request
) -> JSONResponse | StreamingResponse:
    translate.check_supported(body)
    store, ctx = store_of(request), context_for(request, "responses")
    owner = owner_of(ctx.principal)
    conversation = await _conversation(store, owner, body)
    if isinstance(conversation, JSONResponse):
        return conversation
    req = translate.inference_request(body, body.model, conversation.items)
    frame = translate.response_frame(body, translate.item_id("resp"), int(time.time()))
    keep = body.store is not False
    pipeline = pipeline_of(request)

    async def save(response: dict[str, Any]) -> None:
        await asyncio.to_thread(store.save, response, conversation.context, conversation.inputs, owner)

    if not body.stream:
        result = await pipeline.run(ctx, req)
        response = translate.response_of(frame, result)
        if keep:
            await save(response)
        return JSONResponse(response, headers={"X-LLMHost-Target": result.target})
    # The stream has its first output (or failed over, or failed) before the 200 goes out.
    deltas = await pipeline.stream(ctx, req)
    events = ResponseStream(frame, on_done=save if keep else None).events(deltas)
    headers = {**SSE_HEADERS, "X-LLMHost-Target": ctx.target or ""}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@router.post("/responses/input_tokens", response_model=None)
async def count_input_tokens(body: wire.InputTokensRequest, request: Request) -> JSONResponse:
    translate.check_supported(body)
    if not body.model:
        raise RequestError("you must provide the 'model' parameter", param="model")
    ctx = context_for(request, "responses")
    conversation = await _conversation(store_of(request), owner_of(ctx.principal), body)
    if isinstance(conversation, JSONResponse):
        return conversation
    req = translate.inference_request(body, body.model, conversation.items)
    count = await pipeline_of(request).count_tokens(ctx, req)
    return JSONResponse({"object": "response.input_tokens", "input_tokens": count})


@router.get("/responses/{response_id}", response_model=None)
async def retrieve_response(response_id: str, request: Request, stream: bool = False) -> JSONResponse:
    if stream:
        raise RequestError("only background responses can be streamed again; none are kept", param="stream")
    owner = owner_of(context_for(request, "responses").principal)
    found = await asyncio.to_thread(store_of(request).get, response_id, owner)
    return JSONResponse(found) if found is not None else _response_not_found(response_id)


@router.delete("/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, request: Request) -> JSONResponse:
    owner = owner_of(context_for(request, "responses").principal)
    if not await asyncio.to_thread(store_of(request).delete, response_id, owner):
        return _response_not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.post("/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: str, request: Request) -> JSONResponse:
    owner = owner_of(context_for(request, "responses").principal)
    if await asyncio.to_thread(store_of(request).get, response_id, owner) is None:
        return _response_not_found(response_id)
    raise RequestError("Only responses created with background=true can be cancelled.", param="response_id")


@router.get("/responses/{response_id}/input_items", response_model=None)
async def list_input_items(
    response_id: str,
    request: Request,
    order: str = "desc",
    limit: str = "20",
    after: str | None = None,
) -> JSONResponse:
    if order not in ("asc", "desc"):
        raise RequestError(f"order must be 'asc' or 'desc', not {order!r}", param="order")
    direction: Literal["asc", "desc"] = "asc" if order == "asc" else "desc"
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise RequestError(f"limit must be an integer from 1 to 100, not {limit!r}", param="limit")
    owner = owner_of(context_for(request, "responses").principal)
    page = await asyncio.to_thread(
        store_of(request).input_items, response_id, owner, order=direction, limit=int(limit), after=after
    )
    if page is None:
        return _response_not_found(response_id)
    return JSONResponse(
        {
            "object": "list",
            "data": page.items,
            "first_id": page.items[0]["id"] if page.items else None,
            "last_id": page.items[-1]["id"] if page.items else None,
            "has_more": page.has_more,
        }
    )
