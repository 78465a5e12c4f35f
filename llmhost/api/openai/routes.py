"""FastAPI routes for the OpenAI-compatible API: parse, call serving, return JSON or SSE."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from llmhost.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmhost.api.openai.serving import OpenAIServing

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
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> dict[str, Any] | StreamingResponse:
    serving = _serving(request)
    if not body.stream:
        return await serving.chat_full(body)
    gen, _ = await serving.chat(body)  # errors raise here, before the 200 is sent
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        serving.chat_stream(gen, include_usage), media_type="text/event-stream", headers=_SSE_HEADERS
    )


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    serving = _serving(request)
    if not body.stream:
        return await serving.complete_full(body)
    gen, echo = await serving.complete(body)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        serving.complete_stream(gen, echo, include_usage),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    return await _serving(request).embeddings(body)
