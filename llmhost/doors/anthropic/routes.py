"""The Anthropic Messages routes: parse, translate to core types, run the pipeline, answer JSON or SSE.

    POST /v1/messages                 a message (``stream`` for SSE events)
    POST /v1/messages/count_tokens    the input tokens a request would use, without generating

Keys come as ``x-api-key`` or ``Authorization: Bearer`` (the gate checks them before any route runs);
``anthropic-version`` and ``anthropic-beta`` headers are accepted and need nothing here. Answers carry
``request-id`` (the SDK's ``_request_id``), errors included; messages also ``X-LLMHost-Target``, who
answered. (``GET /v1/models`` in Anthropic's shape is :mod:`llmhost.doors.anthropic.models`.)

``max_tokens: 0`` asks Anthropic to cache the prompt and answer nothing. Here the prompt is read by a
one-token run, whose prefill leaves it in the prefix cache, and the token is dropped.

Anthropic's ``max_tokens`` is a ceiling: an answer may run until the context window is full and stop
with ``model_context_window_exceeded``. Clients rely on that (Claude Code asks for 32,000 tokens whatever
the model), so a prompt that fits but leaves less room than ``max_tokens`` runs again with
``max_tokens`` cut to that room.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llmhost.core.types import InferenceRequest, RequestContext
from llmhost.doors.anthropic import protocol as wire
from llmhost.doors.anthropic import translate
from llmhost.doors.anthropic.stream import MessageStream
from llmhost.doors.common import context_for, door_route, pipeline_of
from llmhost.errors import ContextLengthError

__all__ = ["fit_context", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", route_class=door_route(translate.render_error))

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DOOR = "anthropic"
T = TypeVar("T")


def _headers(ctx: RequestContext, target: str | None) -> dict[str, str]:
    return {"request-id": ctx.request_id, "X-LLMHost-Target": target or ""}


def fit_context(request: InferenceRequest, exc: ContextLengthError) -> InferenceRequest | None:
    """``request`` with ``max_tokens`` cut to the room its prompt leaves in the context window, or
    ``None`` when the prompt itself does not fit (or ``max_tokens`` was not what overflowed)."""
    max_tokens = request.sampling.max_tokens
    if max_tokens is None:
        return None
    room = exc.allowed - (exc.requested - max_tokens)
    if not 1 <= room < max_tokens:
        return None
    return replace(request, sampling=replace(request.sampling, max_tokens=room))


async def _within_context(
    request: Request,
    req: InferenceRequest,
    call: Callable[[RequestContext, InferenceRequest], Awaitable[T]],
) -> tuple[RequestContext, T, bool]:
    """``call``'s answer, its context, and whether ``max_tokens`` had to be cut (see the module doc)."""
    ctx = context_for(request, DOOR)
    try:
        return ctx, await call(ctx, req), False
    except ContextLengthError as exc:
        fitted = fit_context(req, exc)
        if fitted is None:
            raise
    log.info(
        "max_tokens %s cut to %s, the room the context leaves",
        req.sampling.max_tokens,
        fitted.sampling.max_tokens,
    )
    ctx = context_for(request, DOOR)
    return ctx, await call(ctx, fitted), True


@router.post("/messages", response_model=None)
async def create_message(body: wire.MessagesRequest, request: Request) -> JSONResponse | StreamingResponse:
    if body.thread is not None:
        return translate.threads_unsupported()
    req = translate.messages_request(body)
    pipeline = pipeline_of(request)
    if body.max_tokens == 0:
        one = replace(req, sampling=replace(req.sampling, max_tokens=1))
        ctx = context_for(request, DOOR)
        result = await pipeline.run(ctx, one)
        message = translate.cached_prompt_body(result, translate.message_id())
        return JSONResponse(message, headers=_headers(ctx, result.target))
    if not body.stream:
        ctx, result, cut = await _within_context(request, req, pipeline.run)
        message = translate.message_body(result, translate.message_id(), context_full=cut)
        return JSONResponse(message, headers=_headers(ctx, result.target))
    # The stream has its first output (or failed over, or failed) before the 200 goes out.
    ctx, deltas, cut = await _within_context(request, req, pipeline.stream)
    events = MessageStream(translate.message_id(), body.model, context_full=cut).events(deltas)
    headers = {**SSE_HEADERS, **_headers(ctx, ctx.target)}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@router.post("/messages/count_tokens")
async def count_tokens(body: wire.CountTokensRequest, request: Request) -> JSONResponse:
    ctx = context_for(request, DOOR)
    n = await pipeline_of(request).count_tokens(ctx, translate.count_request(body))
    return JSONResponse({"input_tokens": n}, headers={"request-id": ctx.request_id})
