"""A provider for Anthropic's Messages API, translating OpenAI chat requests both ways, streams included.

Request (OpenAI chat -> ``POST /v1/messages``): ``system``/``developer`` messages are lifted into the
top-level ``system`` field; consecutive messages of one role are merged (the API wants turns to
alternate); text and image parts become content blocks; ``max_tokens`` (or ``max_completion_tokens``)
is required by Anthropic and defaults to 4096; ``temperature``, ``top_p``, ``top_k`` pass through,
``stop`` becomes ``stop_sequences`` and ``user`` becomes ``metadata.user_id``. What the Messages API
cannot express (tools, ``n`` > 1, logprobs, JSON response formats, tool messages) is refused up front
with a non-retryable 400 :class:`ProviderHTTPError`; OpenAI-only sampling knobs (``seed``, penalties,
``logit_bias``) are dropped.

Answer: ``stop_reason`` ``end_turn``/``stop_sequence`` -> ``stop``, ``max_tokens`` -> ``length``; usage
``input_tokens`` (+ cache reads and writes) -> ``prompt_tokens``, ``output_tokens`` ->
``completion_tokens``. Streams: ``message_start`` .. ``content_block_delta`` (``text_delta``) ..
``message_delta`` .. ``message_stop`` become a role chunk, text chunks, a finish chunk and a usage chunk;
``ping`` and unknown events are skipped; an ``error`` event is an error (see ``http``'s module doc).
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
    iter_sse,
)
from llmhost.providers.shapes import (
    chat_chunk,
    chat_completion,
    chat_to_text_chunks,
    chat_to_text_completion,
    now,
    unsupported,
    usage,
    usage_chunk,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
    "anthropic_sse_chunks",
    "finish_reason",
    "from_messages_response",
    "to_messages_request",
]

DEFAULT_MAX_TOKENS = 4096
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_REFUSED_PARAMS = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs", "audio")
_MODELS_PAGE = 1000


def finish_reason(stop_reason: object) -> str:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason``."""
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _usage(raw: object) -> dict[str, Any]:
    u = raw if isinstance(raw, dict) else {}
    cached = int(u.get("cache_read_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + cached + int(u.get("cache_creation_input_tokens") or 0)
    return usage(prompt, int(u.get("output_tokens") or 0), cached)


def _image_block(provider: str, part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise unsupported(provider, "image_url parts need a url")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0]
        if not header.endswith(";base64") or not data:
            raise unsupported(provider, "data: image URLs must be base64-encoded")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(provider: str, content: object, *, text_only: bool = False) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise unsupported(provider, "message content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and not text_only:
            blocks.append(_image_block(provider, part))
        else:
            where = "system messages" if text_only else "the Anthropic translation"
            raise unsupported(provider, f"content part type {kind!r} is not supported in {where}")
    return blocks


def to_messages_request(
    provider: str, request: ChatRequest, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """The Messages API body for an OpenAI chat request (without ``stream``)."""
    params = request.params
    for key in _REFUSED_PARAMS:
        if params.get(key):
            raise unsupported(provider, f"{key!r} is not supported by the Anthropic provider")
    if params.get("n", 1) not in (1, None):
        raise unsupported(provider, "n > 1 is not supported by the Anthropic Messages API")
    response_format = params.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        raise unsupported(
            provider, "response_format other than text is not supported by the Anthropic provider"
        )

    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(
                b["text"] for b in _content_blocks(provider, message.get("content"), text_only=True)
            )
            continue
        if role not in ("user", "assistant"):
            raise unsupported(
                provider, f"messages with role {role!r} are not supported by the Anthropic provider"
            )
        if message.get("tool_calls") or message.get("function_call"):
            raise unsupported(provider, "tool calls are not supported by the Anthropic provider")
        blocks = _content_blocks(provider, message.get("content"))
        if not blocks:
            continue  # the API rejects empty turns; an empty message adds nothing
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    for m in messages:  # the plain-string form where it suffices: smaller, and what the docs show
        if len(m["content"]) == 1 and m["content"][0]["type"] == "text":
            m["content"] = m["content"][0]["text"]

    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens") or default_max_tokens
    body: dict[str, Any] = {"model": request.model, "max_tokens": max_tokens, "messages": messages}
    if system:
        body["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p", "top_k"):
        if params.get(key) is not None:
            body[key] = params[key]
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("user"):
        body["metadata"] = {"user_id": str(params["user"])}
    return body


def from_messages_response(message: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` for a Messages API answer."""
    blocks = message.get("content") or []
    text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    return chat_completion(
        str(message.get("id", "")),
        now(),
        str(message.get("model", "")),
        text,
        finish_reason(message.get("stop_reason")),
        _usage(message.get("usage")),
    )


async def anthropic_sse_chunks(lines: AsyncIterator[str]) -> AsyncGenerator[dict[str, Any], None]:
    """Decode a Messages API event stream into OpenAI chat chunks.

    The role chunk is held back until the first text (or the end), so the first chunk marks the first
    token. Ends with a finish chunk and a usage chunk at ``message_stop``; a stream that ends before it,
    or an ``error`` event, raises :class:`UpstreamReportedError`.
    """
    id_, model, created = "", "", now()
    raw_usage: dict[str, Any] = {}
    stop_reason: object = None
    role_sent = False
    async for event, data in iter_sse(lines):
        try:
            payload = json.loads(data)
        except ValueError:
            raise UpstreamReportedError(f"upstream sent a {event} event that is not JSON") from None
        kind = payload.get("type", event) if isinstance(payload, dict) else None
        text = ""
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                text = delta.get("text") or ""
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "text":
                text = block.get("text") or ""
        elif kind == "message_start":
            message = payload.get("message") or {}
            id_, model = str(message.get("id", "")), str(message.get("model", ""))
            raw_usage.update(message.get("usage") or {})
        elif kind == "message_delta":
            stop_reason = (payload.get("delta") or {}).get("stop_reason", stop_reason)
            raw_usage.update(payload.get("usage") or {})  # cumulative counts
        elif kind == "message_stop":
            if not role_sent:
                yield chat_chunk(id_, created, model, {"role": "assistant", "content": ""})
            yield chat_chunk(id_, created, model, {}, finish_reason(stop_reason))
            yield usage_chunk(id_, created, model, _usage(raw_usage), "chat.completion.chunk")
            return
        elif kind == "error":
            raise in_band_error(payload)
        # ping, content_block_stop and event types added later carry nothing to translate
        if text:
            if not role_sent:
                role_sent = True
                yield chat_chunk(id_, created, model, {"role": "assistant", "content": ""})
            yield chat_chunk(id_, created, model, {"content": text})
    raise UpstreamReportedError("the stream ended before message_stop")


class AnthropicProvider(UpstreamProvider):
    """Anthropic's Messages API at ``base_url``, spoken with ``x-api-key`` and ``anthropic-version``."""

    def __init__(
        self,
        name: str,
        base_url: str = "https://api.anthropic.com",
        *,
        api_key: str | None = None,
        version: str = "2023-06-01",
        timeouts: Timeouts = Timeouts(),
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        max_connections: int = 64,
    ) -> None:
        self.name = name
        self.version = version
        self.default_max_tokens = default_max_tokens
        headers = {"content-type": "application/json", "anthropic-version": version}
        if api_key:
            headers["x-api-key"] = api_key
        self._http = UpstreamClient(
            name,
            base_url,
            headers=headers,
            timeouts=timeouts,
            secrets=(api_key,),
            max_connections=max_connections,
        )

    def _request(self, request: ChatRequest) -> dict[str, Any]:
        return to_messages_request(self.name, request, default_max_tokens=self.default_max_tokens)

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        answer = await self._http.request_json("POST", "/v1/messages", self._request(request))
        if not isinstance(answer, dict):
            raise self._http.reported_error(UpstreamReportedError("the Messages API answer is not an object"))
        with self._http.translating("Messages API answer"):
            return from_messages_response(answer)

    async def chat_stream(self, request: ChatRequest) -> AsyncGenerator[dict[str, Any], None]:
        body = {**self._request(request), "stream": True}  # refusals raise here, before any request
        chunks = self._http.stream("/v1/messages", body, anthropic_sse_chunks)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    def _as_chat(self, request: CompletionRequest) -> ChatRequest:
        if not isinstance(request.prompt, str):
            raise unsupported(self.name, "the Anthropic provider takes a text prompt, not token ids")
        messages: list[dict[str, Any]] = [{"role": "user", "content": request.prompt}]
        params = {k: v for k, v in request.params.items() if k not in ("echo", "suffix", "best_of")}
        return ChatRequest(model=request.model, messages=messages, params=params)

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        return chat_to_text_completion(await self.chat(self._as_chat(request)))

    async def complete_stream(self, request: CompletionRequest) -> AsyncGenerator[dict[str, Any], None]:
        chunks = chat_to_text_chunks(self.chat_stream(self._as_chat(request)))
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        raise unsupported(self.name, "Anthropic has no embeddings API")

    async def list_models(self) -> list[str]:
        models: list[str] = []
        params: dict[str, Any] = {"limit": _MODELS_PAGE}
        for _ in range(100):  # pages; a bound so a looping upstream cannot hold us forever
            page = await self._http.request_json(
                "GET", "/v1/models", params=params, timeout=min(self.timeouts.total, 30.0)
            )
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise self._http.reported_error(UpstreamReportedError("GET /v1/models answered without data"))
            models.extend(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)
            if not page.get("has_more") or not page.get("last_id"):
                break
            params = {"limit": _MODELS_PAGE, "after_id": page["last_id"]}
        return models

    async def health(self) -> bool:
        return await self._http.probe("/v1/models?limit=1")
