"""A provider for Ollama's native API: ``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``.

Request: OpenAI sampling fields go into ``options`` (``temperature``, ``top_p``, ``top_k``, ``seed``,
``stop``, the penalties, llama.cpp's ``min_p``/``repeat_penalty``; ``max_tokens`` -> ``num_predict``);
``response_format`` ``json_object`` -> ``format: "json"``, ``json_schema`` -> ``format: <schema>``; text
parts are joined and base64 ``data:`` images go to ``images``. Completions use ``/api/generate`` with
``raw: true`` (OpenAI's completions continue the prompt as given, without a chat template).

Answer: ``done_reason`` ``length`` -> ``length``, anything else -> ``stop``; ``prompt_eval_count`` and
``eval_count`` -> usage. Streams are NDJSON: each line's ``message.content`` (or ``response``) becomes a
chunk; the ``done: true`` line becomes a finish chunk and a usage chunk; an ``{"error": ...}`` line, or
an end without ``done``, is an error (see ``http``'s module doc).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from llmhost.providers.base import ChatRequest, CompletionRequest, EmbeddingRequest
from llmhost.providers.http import (
    Timeouts,
    UpstreamClient,
    UpstreamProvider,
    UpstreamReportedError,
    in_band_error,
)
from llmhost.providers.shapes import (
    chat_chunk,
    chat_chunk_to_text_chunk,
    chat_completion,
    chat_to_text_completion,
    new_id,
    now,
    unsupported,
    usage,
    usage_chunk,
)

__all__ = [
    "OllamaProvider",
    "ollama_chat_chunks",
    "ollama_generate_chunks",
    "to_ollama_chat",
    "to_ollama_options",
]

_OPTION_NAMES = (
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "min_p",
    "repeat_penalty",
)
_REFUSED_PARAMS = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs")


def _finish_reason(done_reason: object) -> str:
    return "length" if done_reason == "length" else "stop"


def _usage(answer: dict[str, Any]) -> dict[str, Any]:
    return usage(int(answer.get("prompt_eval_count") or 0), int(answer.get("eval_count") or 0))


def to_ollama_options(provider: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ollama's ``options`` for OpenAI sampling fields; refuses what Ollama's native API cannot do."""
    for key in _REFUSED_PARAMS:
        if params.get(key):
            raise unsupported(provider, f"{key!r} is not supported by the Ollama provider")
    if params.get("n", 1) not in (1, None):
        raise unsupported(provider, "n > 1 is not supported by Ollama")
    options = {key: params[key] for key in _OPTION_NAMES if params.get(key) is not None}
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stop = params.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return options


def _format(params: dict[str, Any]) -> Any:
    response_format = params.get("response_format")
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or "json"
    return None


def _message(provider: str, message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role not in ("system", "user", "assistant"):
        raise unsupported(provider, f"messages with role {role!r} are not supported by the Ollama provider")
    if message.get("tool_calls") or message.get("function_call"):
        raise unsupported(provider, "tool calls are not supported by the Ollama provider")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return {"role": role, "content": content or ""}
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not (isinstance(url, str) and url.startswith("data:") and ";base64," in url):
                raise unsupported(provider, "Ollama takes images as base64 data: URLs only")
            images.append(url.partition(",")[2])
        else:
            raise unsupported(provider, f"content part type {kind!r} is not supported by the Ollama provider")
    result: dict[str, Any] = {"role": role, "content": "".join(texts)}
    if images:
        result["images"] = images
    return result


def to_ollama_chat(provider: str, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/api/chat`` body for an OpenAI chat request."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(provider, m) for m in request.messages],
        "stream": stream,
    }
    options = to_ollama_options(provider, request.params)
    if options:
        body["options"] = options
    fmt = _format(request.params)
    if fmt is not None:
        body["format"] = fmt
    return body


async def _ndjson_chunks(lines: AsyncIterator[str], field: str) -> AsyncGenerator[dict[str, Any], None]:
    id_, created, model = new_id("chatcmpl"), now(), ""
    role_sent = False
    async for line in lines:
        if not line:
            continue
        try:
            answer = json.loads(line)
        except ValueError:
            raise UpstreamReportedError("upstream sent a line that is not JSON") from None
        if not isinstance(answer, dict):
            raise UpstreamReportedError("upstream sent a line that is not a JSON object")
        if "error" in answer:
            raise in_band_error(answer)
        model = str(answer.get("model", model))
        if field == "message":
            text = (answer.get("message") or {}).get("content") or ""
        else:
            text = answer.get("response") or ""
        if (text or answer.get("done")) and not role_sent:
            role_sent = True
            yield chat_chunk(id_, created, model, {"role": "assistant", "content": ""})
        if text:
            yield chat_chunk(id_, created, model, {"content": text})
        if answer.get("done"):
            yield chat_chunk(id_, created, model, {}, _finish_reason(answer.get("done_reason")))
            yield usage_chunk(id_, created, model, _usage(answer), "chat.completion.chunk")
            return
    raise UpstreamReportedError("the stream ended before its done line")


def ollama_chat_chunks(lines: AsyncIterator[str]) -> AsyncGenerator[dict[str, Any], None]:
    """Decode an ``/api/chat`` NDJSON stream into OpenAI chat chunks (role chunk held to the first text)."""
    return _ndjson_chunks(lines, "message")


async def ollama_generate_chunks(lines: AsyncIterator[str]) -> AsyncGenerator[dict[str, Any], None]:
    """Decode an ``/api/generate`` NDJSON stream into ``text_completion`` chunks."""
    chunks = _ndjson_chunks(lines, "response")
    try:
        async for chunk in chunks:
            text_chunk = chat_chunk_to_text_chunk(chunk)
            if text_chunk is not None:
                yield text_chunk
    finally:
        await chunks.aclose()


class OllamaProvider(UpstreamProvider):
    """An Ollama server at ``base_url``, spoken to in its native API (no key: Ollama has none)."""

    def __init__(
        self,
        name: str,
        base_url: str = "http://127.0.0.1:11434",
        *,
        timeouts: Timeouts = Timeouts(),
        max_connections: int = 64,
    ) -> None:
        self.name = name
        self._http = UpstreamClient(
            name,
            base_url,
            headers={"content-type": "application/json"},
            timeouts=timeouts,
            max_connections=max_connections,
        )

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self._http.request_json("POST", path, body)
        if not isinstance(answer, dict):
            raise self._http.reported_error(UpstreamReportedError(f"{path} answered with a non-object"))
        if "error" in answer:
            raise self._http.reported_error(in_band_error(answer))
        return answer

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        answer = await self._post("/api/chat", to_ollama_chat(self.name, request, stream=False))
        with self._http.translating("/api/chat answer"):
            return chat_completion(
                new_id("chatcmpl"),
                now(),
                str(answer.get("model", request.model)),
                str((answer.get("message") or {}).get("content") or ""),
                _finish_reason(answer.get("done_reason")),
                _usage(answer),
            )

    async def chat_stream(self, request: ChatRequest) -> AsyncGenerator[dict[str, Any], None]:
        chunks = self._http.stream(
            "/api/chat", to_ollama_chat(self.name, request, stream=True), ollama_chat_chunks
        )
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    def _generate_body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        if not isinstance(request.prompt, str):
            raise unsupported(self.name, "the Ollama provider takes a text prompt, not token ids")
        body: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            "stream": stream,
            "raw": True,
        }
        options = to_ollama_options(self.name, request.params)
        if options:
            body["options"] = options
        if request.params.get("suffix"):
            body["suffix"] = request.params["suffix"]
        fmt = _format(request.params)
        if fmt is not None:
            body["format"] = fmt
        return body

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        answer = await self._post("/api/generate", self._generate_body(request, stream=False))
        with self._http.translating("/api/generate answer"):
            completion = chat_completion(
                new_id("chatcmpl"),
                now(),
                str(answer.get("model", request.model)),
                str(answer.get("response") or ""),
                _finish_reason(answer.get("done_reason")),
                _usage(answer),
            )
            return chat_to_text_completion(completion)

    async def complete_stream(self, request: CompletionRequest) -> AsyncGenerator[dict[str, Any], None]:
        body = self._generate_body(request, stream=True)
        chunks = self._http.stream("/api/generate", body, ollama_generate_chunks)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        inputs = request.input
        if not all(isinstance(item, str) for item in inputs):
            raise unsupported(self.name, "the Ollama provider embeds text, not token ids")
        body: dict[str, Any] = {"model": request.model, "input": list(inputs)}
        if request.params.get("dimensions"):
            body["dimensions"] = request.params["dimensions"]
        answer = await self._post("/api/embed", body)
        vectors = answer.get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(inputs):
            raise self._http.reported_error(
                UpstreamReportedError("/api/embed answered without one embedding per input")
            )
        with self._http.translating("/api/embed answer"):
            prompt_tokens = int(answer.get("prompt_eval_count") or 0)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": str(answer.get("model", request.model)),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    async def list_models(self) -> list[str]:
        answer = await self._http.request_json("GET", "/api/tags", timeout=min(self.timeouts.total, 30.0))
        models = answer.get("models") if isinstance(answer, dict) else None
        if not isinstance(models, list):
            raise self._http.reported_error(UpstreamReportedError("/api/tags answered without a models list"))
        return [str(m.get("name") or m.get("model")) for m in models if isinstance(m, dict)]

    async def health(self) -> bool:
        return await self._http.probe("/api/version")
