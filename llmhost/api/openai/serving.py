"""Turns protocol requests into gateway calls, and gateway results into OpenAI's JSON and SSE shapes."""

from __future__ import annotations

import base64
import json
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

from llmhost.api.errors import status_for
from llmhost.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmhost.errors import EngineError, LLMHostError, RequestError
from llmhost.providers.base import ChatRequest
from llmhost.providers.base import CompletionRequest as ProviderCompletionRequest
from llmhost.providers.base import EmbeddingRequest as ProviderEmbeddingRequest
from llmhost.router.strategies import Target
from llmhost.service import Service

__all__ = ["OpenAIServing"]

log = logging.getLogger(__name__)

_DONE = b"data: [DONE]\n\n"
_NOT_PARAMS = {"model", "messages", "prompt", "input", "stream", "stream_options"}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def target_header(target: Target) -> dict[str, str]:
    return {"X-LLMHost-Target": f"{target.settings.provider}/{target.settings.model}"}


class OpenAIServing:
    """The OpenAI-compatible endpoints over the service's gateway."""

    def __init__(self, service: Service) -> None:
        self.service = service

    @property
    def gateway(self) -> Any:
        return self.service.gateway

    # ----- models ------------------------------------------------------------------------------------
    def _cards(self) -> list[dict[str, Any]]:
        cards = [
            {"id": r.name, "object": "model", "created": int(r.created_at.timestamp()), "owned_by": "llmhost"}
            for r in self.service.list_models()
        ]
        started = int(self.service.started_at)
        cards += [
            {"id": n, "object": "model", "created": started, "owned_by": "llmhost-route"}
            for n in self.gateway.public_models()
        ]
        return cards

    def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": self._cards()}

    def model_card(self, name: str) -> dict[str, Any]:
        for card in self._cards():
            if card["id"] == name:
                return card
        self.service.get_model(name)  # raises ModelNotFoundError
        raise AssertionError("unreachable")

    # ----- chat --------------------------------------------------------------------------------------
    @staticmethod
    def chat_request(req: ChatCompletionRequest) -> ChatRequest:
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        for m in messages:
            if m["role"] == "developer":
                m["role"] = "system"
        params = req.model_dump(exclude_unset=True, by_alias=True, exclude=_NOT_PARAMS)
        return ChatRequest(req.model, messages, params)

    async def chat_full(self, req: ChatCompletionRequest) -> tuple[dict[str, Any], Target]:
        response, target, _ = await self.gateway.chat(self.chat_request(req))
        return response, target

    async def chat_stream(self, req: ChatCompletionRequest) -> tuple[AsyncIterator[bytes], Target]:
        chunks, target, _ = await self.gateway.chat_stream(self.chat_request(req))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _encode_sse(chunks, include_usage), target

    # ----- completions -------------------------------------------------------------------------------
    @staticmethod
    def completion_request(req: CompletionRequest) -> ProviderCompletionRequest:
        p = req.prompt
        prompt: str | list[int]
        if isinstance(p, str):
            prompt = p
        elif p and all(isinstance(x, int) for x in p):
            prompt = [int(x) for x in p]  # type: ignore[arg-type]
        elif len(p) == 1:
            prompt = p[0]  # type: ignore[assignment]
        else:
            raise RequestError("exactly one prompt per request is supported", param="prompt")
        if prompt in ("", []):
            raise RequestError("prompt must not be empty", param="prompt")
        params = req.model_dump(exclude_unset=True, by_alias=True, exclude=_NOT_PARAMS)
        params.setdefault("max_tokens", req.max_tokens)  # OpenAI's default of 16 for this endpoint
        return ProviderCompletionRequest(req.model, prompt, params)

    async def complete_full(self, req: CompletionRequest) -> tuple[dict[str, Any], Target]:
        response, target, _ = await self.gateway.complete(self.completion_request(req))
        return response, target

    async def complete_stream(self, req: CompletionRequest) -> tuple[AsyncIterator[bytes], Target]:
        chunks, target, _ = await self.gateway.complete_stream(self.completion_request(req))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _encode_sse(chunks, include_usage), target

    # ----- embeddings --------------------------------------------------------------------------------
    async def embeddings(self, req: EmbeddingRequest) -> tuple[dict[str, Any], Target]:
        raw = req.input
        inputs: list[Any]
        if isinstance(raw, str):
            inputs = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            inputs = [[int(x) for x in raw]]  # type: ignore[arg-type]
        else:
            inputs = list(raw)
        if not inputs or any(len(x) == 0 for x in inputs):
            raise RequestError("input must be a non-empty string or array", param="input")
        if len(inputs) > 2048:
            raise RequestError("at most 2048 inputs per request", param="input")
        params = {"dimensions": req.dimensions} if req.dimensions is not None else {}
        response, target, _ = await self.gateway.embed(ProviderEmbeddingRequest(req.model, inputs, params))
        data = response.get("data") or []
        width = len(data[0]["embedding"]) if data else 0
        if req.dimensions is not None and req.dimensions != width:
            raise RequestError(
                f"this model's embeddings have {width} dimensions; "
                f"dimensions={req.dimensions} is not supported",
                param="dimensions",
            )
        if req.encoding_format == "base64":
            for item in data:
                vec = item["embedding"]
                item["embedding"] = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        response["model"] = req.model
        return response, target


async def _encode_sse(chunks: AsyncIterator[dict[str, Any]], include_usage: bool) -> AsyncIterator[bytes]:
    """Chunks as SSE; the usage chunk only when asked for; a failure mid-stream as one error event."""
    try:
        async for chunk in chunks:
            if "usage" in chunk and not chunk.get("choices"):
                if include_usage and chunk["usage"] is not None:
                    yield _sse(chunk)
                continue
            if include_usage:
                chunk.setdefault("usage", None)
            else:
                chunk.pop("usage", None)
            yield _sse(chunk)
    except Exception as exc:
        err = exc if isinstance(exc, LLMHostError) else EngineError(str(exc))
        log.warning("stream ended with an error: %s", err)
        yield _sse(status_for(err)[1])
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # the client went away, or we are done: free the slot
    yield _DONE
