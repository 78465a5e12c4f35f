"""A provider for any OpenAI-compatible server: OpenAI, DeepSeek, vLLM, llama.cpp, Ollama's /v1, llmhost.

Requests are forwarded as they are (OpenAI is llmhost's own wire format), answers are returned as the
upstream's decoded JSON. This is the gateway's hot path, so it does the least it can: one ``json.dumps``
out, one ``json.loads`` back, one reused keep-alive client, no models or validation in between.
Streams always ask for usage (``stream_options.include_usage``), so their last chunk carries it when the
upstream supports that option.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from llmhost.providers.base import ChatRequest, CompletionRequest, EmbeddingRequest
from llmhost.providers.http import (
    Timeouts,
    UpstreamClient,
    UpstreamProvider,
    UpstreamReportedError,
    carries_output,
    in_band_error,
    iter_sse,
)

__all__ = ["OpenAICompatProvider", "openai_sse_chunks"]

_STREAM_KEYS = ("stream", "stream_options")


async def openai_sse_chunks(lines: AsyncIterator[str]) -> AsyncGenerator[dict[str, Any], None]:
    """Decode an OpenAI SSE stream into chunk dicts, up to ``data: [DONE]``.

    Content-free leading chunks (the role-only one) are held back until the first chunk with output, so
    the first chunk yielded marks the first token. An ``{"error": ...}`` event, a malformed event, or an
    end without ``[DONE]`` raises :class:`UpstreamReportedError`.
    """
    held: list[dict[str, Any]] | None = []
    async for _event, data in iter_sse(lines):
        if data == "[DONE]":
            for chunk in held or ():
                yield chunk
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamReportedError("upstream sent an event that is not JSON") from None
        if not isinstance(chunk, dict):
            raise UpstreamReportedError("upstream sent an event that is not a JSON object")
        if "error" in chunk and not chunk.get("choices"):
            raise in_band_error(chunk)
        if held is not None:
            if not carries_output(chunk):
                held.append(chunk)
                continue
            for early in held:
                yield early
            held = None
        yield chunk
    raise UpstreamReportedError("the stream ended before data: [DONE]")


class OpenAICompatProvider(UpstreamProvider):
    """An OpenAI-compatible upstream at ``base_url`` (e.g. ``http://127.0.0.1:9000/v1``).

    ``api_key`` is sent as ``Authorization: Bearer``; ``extra_headers`` go with every request (header
    values whose names look secret — ``*key*``, ``*token*``, ``*auth*`` — are scrubbed like the key).
    ``health_path`` is probed with GET, relative to ``base_url`` or an absolute URL.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None = None,
        *,
        timeouts: Timeouts = Timeouts(),
        extra_headers: Mapping[str, str] | None = None,
        health_path: str = "/models",
        max_connections: int = 64,
    ) -> None:
        self.name = name
        headers = {"content-type": "application/json"}
        headers.update(extra_headers or {})
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._health_path = health_path
        self._http = UpstreamClient(
            name,
            base_url,
            headers=headers,
            timeouts=timeouts,
            secrets=(api_key,),
            max_connections=max_connections,
        )

    @staticmethod
    def _body(model: str, key: str, value: Any, params: dict[str, Any], stream: bool) -> dict[str, Any]:
        body = {**params, "model": model, key: value}
        if stream:
            options = params.get("stream_options")
            body["stream"] = True
            body["stream_options"] = (
                {**options, "include_usage": True} if options else {"include_usage": True}
            )
        else:
            for k in _STREAM_KEYS:
                body.pop(k, None)
        return body

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        body = self._body(request.model, "messages", request.messages, request.params, False)
        result: dict[str, Any] = await self._http.request_json("POST", "/chat/completions", body)
        return result

    def chat_stream(self, request: ChatRequest) -> AsyncGenerator[dict[str, Any], None]:
        body = self._body(request.model, "messages", request.messages, request.params, True)
        return self._http.stream("/chat/completions", body, openai_sse_chunks)

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        body = self._body(request.model, "prompt", request.prompt, request.params, False)
        result: dict[str, Any] = await self._http.request_json("POST", "/completions", body)
        return result

    def complete_stream(self, request: CompletionRequest) -> AsyncGenerator[dict[str, Any], None]:
        body = self._body(request.model, "prompt", request.prompt, request.params, True)
        return self._http.stream("/completions", body, openai_sse_chunks)

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        # The protocol promises float vectors; base64 (if the client wants it) is the door's business.
        body = {**request.params, "model": request.model, "input": request.input, "encoding_format": "float"}
        result: dict[str, Any] = await self._http.request_json("POST", "/embeddings", body)
        return result

    async def list_models(self) -> list[str]:
        answer = await self._http.request_json("GET", "/models", timeout=min(self.timeouts.total, 30.0))
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise self._http.reported_error(UpstreamReportedError("GET /models answered without a data list"))
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def health(self) -> bool:
        return await self._http.probe(self._health_path)
