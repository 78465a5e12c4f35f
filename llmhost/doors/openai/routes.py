"""The OpenAI-compatible routes: parse, translate to core types, run the pipeline, answer JSON or SSE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llmhost.apps.agents import CITATIONS_KEY
from llmhost.apps.ensemble import EnsembleSpec, Member, run_ensemble
from llmhost.core.pipeline import Pipeline
from llmhost.core.stream import deltas_of, merge_results, merge_streams
from llmhost.core.types import InferenceRequest, Principal, RequestContext, Result, new_id
from llmhost.doors.anthropic import models as anthropic_models
from llmhost.doors.common import PRINCIPAL_KEY, context_for, door_route, pipeline_of
from llmhost.doors.openai import protocol as wire
from llmhost.doors.openai import stored, translate
from llmhost.errors import ModelNotFoundError, RequestError
from llmhost.security.keys import model_allowed
from llmhost.service import Service

__all__ = ["router"]

router = APIRouter(prefix="/v1", route_class=door_route(translate.render_error))

_T = TypeVar("_T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def target_header(target: str) -> dict[str, str]:
    return {"X-LLMHost-Target": target}


def model_cards(service: Service) -> list[dict[str, Any]]:
    """Local models and the gateway's route names: the same list ``/api/tags`` shows."""
    cards = [
        {"id": r.name, "object": "model", "created": int(r.created_at.timestamp()), "owned_by": "llmhost"}
        for r in service.list_models()
    ]
    started = int(service.started_at)
    cards += [
        {"id": n, "object": "model", "created": started, "owned_by": "llmhost-route"}
        for n in service.gateway.public_models()
    ]
    cards += [
        {"id": a.name, "object": "model", "created": started, "owned_by": "llmhost-agent"}
        for a in service.agents.all()
    ]
    return cards


def _visible_cards(request: Request) -> list[dict[str, Any]]:
    """The cards of the models the caller's key may use (a key limited to some models sees only those,
    as OpenAI lists only the models a key has access to)."""
    principal = request.scope.get(PRINCIPAL_KEY)
    globs = principal.models if isinstance(principal, Principal) else ()
    return [c for c in model_cards(request.app.state.service) if model_allowed(globs, c["id"])]


@router.get("/models", response_model=None)
async def list_models(request: Request) -> dict[str, Any] | JSONResponse:
    cards = _visible_cards(request)
    if anthropic_models.speaks_anthropic(request.headers):
        return anthropic_models.models_answer(cards, request.query_params)
    return {"object": "list", "data": cards}


@router.get("/models/{model:path}", response_model=None)
async def get_model(model: str, request: Request) -> dict[str, Any] | JSONResponse:
    cards = _visible_cards(request)
    if anthropic_models.speaks_anthropic(request.headers):
        return anthropic_models.model_answer(cards, model)
    for card in cards:
        if card["id"] == model:
            return card
    raise ModelNotFoundError(model)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: wire.ChatCompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    req = translate.chat_request(body)
    stored.check_metadata(body.metadata)
    pipeline, ctx = pipeline_of(request), context_for(request, "openai")
    functions = body.functions is not None
    if not body.stream:
        result = await pipeline.run(ctx, req)
        answer = translate.chat_response(result, functions)
        if body.metadata is not None:
            answer["metadata"] = body.metadata
        if body.store:
            await stored.keep(request, answer, body.messages, body.metadata)
        return JSONResponse(answer, headers=target_header(result.target))
    # The stream has its first output (or failed over, or failed) before the 200 goes out.
    deltas = await pipeline.stream(ctx, req)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    citations = ctx.attrs.get(CITATIONS_KEY)
    id_, created = new_id("chatcmpl"), _now()
    if body.store:
        deltas = stored.keep_stream(
            request, deltas, id_, body.model, created, body.messages, body.metadata, functions
        )
    events = translate.sse_chat(deltas, id_, body.model, created, include_usage, citations, functions)
    headers = {**SSE_HEADERS, **target_header(ctx.target or "")}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@router.post("/completions", response_model=None)
async def completions(body: wire.CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    reqs = translate.completion_requests(body)
    pipeline, ctx = pipeline_of(request), context_for(request, "openai")
    if len(reqs) > 1:  # a list of prompts: each a request of its own through the pipeline, at once
        return await _completions_of_many(body, reqs, pipeline, ctx)
    if not body.stream:
        result = await pipeline.run(ctx, reqs[0])
        return JSONResponse(translate.completion_response(result), headers=target_header(result.target))
    deltas = await pipeline.stream(ctx, reqs[0])
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    logprobs = body.logprobs is not None
    events = translate.sse_completion(deltas, new_id("cmpl"), body.model, _now(), include_usage, logprobs)
    headers = {**SSE_HEADERS, **target_header(ctx.target or "")}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _completions_of_many(
    body: wire.CompletionRequest, reqs: list[InferenceRequest], pipeline: Pipeline, ctx: RequestContext
) -> JSONResponse | StreamingResponse:
    def child() -> RequestContext:
        return RequestContext(principal=ctx.principal, door=ctx.door, request_id=ctx.request_id)

    if not body.stream:
        result = merge_results(await _all(pipeline.run(child(), r) for r in reqs), body.n)
        return JSONResponse(translate.completion_response(result), headers=target_header(result.target))
    contexts = [child() for _ in reqs]
    streams = await _all(pipeline.stream(c, r) for c, r in zip(contexts, reqs, strict=True))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    logprobs = body.logprobs is not None
    events = translate.sse_completion(
        merge_streams(streams, body.n), new_id("cmpl"), body.model, _now(), include_usage, logprobs
    )
    headers = {**SSE_HEADERS, **target_header(contexts[0].target or "")}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _all(calls: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await all at once; when one fails, cancel the others (and close the streams that started)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        for done in await asyncio.gather(*tasks, return_exceptions=True):
            aclose = getattr(done, "aclose", None)
            if aclose is not None:
                await aclose()
        raise


@router.post("/embeddings", response_model=None)
async def embeddings(body: wire.EmbeddingRequest, request: Request) -> JSONResponse:
    req = translate.embed_request(body)
    result = await pipeline_of(request).embed(context_for(request, "openai"), req)
    width = len(result.vectors[0]) if result.vectors else 0
    if body.dimensions is not None and body.dimensions != width:
        raise RequestError(
            f"this model's embeddings have {width} dimensions; dimensions={body.dimensions} is not supported",
            param="dimensions",
        )
    response = translate.embeddings_response(result, body.encoding_format)
    return JSONResponse(response, headers=target_header(result.target))


@router.post("/ensemble", response_model=None)
async def ensemble(body: wire.EnsembleRequest, request: Request) -> JSONResponse | StreamingResponse:
    """Ask every model in ``models`` at once, each through the whole pipeline as a request of its own
    (the key's model rules, limits, usage and audit apply per member), and combine the answers."""
    name = body.model or "ensemble"
    req = translate.chat_request(body.model_copy(update={"model": name}))
    pipeline, ctx = pipeline_of(request), context_for(request, "openai")

    def member(model: str) -> Member:
        async def call(r: InferenceRequest) -> Result:
            child = RequestContext(principal=ctx.principal, door=ctx.door, request_id=ctx.request_id)
            return await pipeline.run(child, replace(r, model=model))

        return Member(model, call)

    judge = member(body.judge) if body.judge else None
    spec = EnsembleSpec(body.aggregate, judge, body.merge, body.timeout)
    result = await run_ensemble([member(m) for m in body.models], req, spec, name=name)
    if not body.stream:
        return JSONResponse(translate.chat_response(result), headers=target_header(result.target))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = translate.sse_chat(deltas_of(result), result.id, name, result.created, include_usage)
    return StreamingResponse(
        events, media_type="text/event-stream", headers={**SSE_HEADERS, **target_header(result.target)}
    )


def _now() -> int:
    return int(time.time())
