"""FastAPI routes for the OpenAI-compatible API: parse, call serving, return JSON or SSE."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llmhost.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmhost.api.openai.serving import OpenAIServing, target_header

__all__ = ["router"]

router = APIRouter(prefix="/v1")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _serving(request: Request) -> OpenAIServing:
    serving: OpenAIServing = request.app.state.serving
    return serving


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return _serving(request).list_models()


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    return _serving(request).model_card(model)


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    serving = _serving(request)
    if not body.stream:
        response, target = await serving.chat_full(body)
        return JSONResponse(response, headers=target_header(target))
    # The stream has its first token (or failed over, or failed) before the 200 goes out.
    stream, target = await serving.chat_stream(body)
    headers = {**_SSE_HEADERS, **target_header(target)}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    serving = _serving(request)
    if not body.stream:
        response, target = await serving.complete_full(body)
        return JSONResponse(response, headers=target_header(target))
    stream, target = await serving.complete_stream(body)
    headers = {**_SSE_HEADERS, **target_header(target)}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.post("/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    response, target = await _serving(request).embeddings(body)
    return JSONResponse(response, headers=target_header(target))
