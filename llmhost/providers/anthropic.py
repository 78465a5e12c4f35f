"""A provider for Anthropic's Messages API: core requests <-> ``POST /v1/messages``, streams included.

Request: ``system`` messages are lifted into the top-level ``system`` field; consecutive messages of one
role are merged (the API wants turns to alternate); image parts become ``image`` blocks (``base64`` or
``url`` sources); an assistant's tool calls become ``tool_use`` blocks and ``role: tool`` answers
``tool_result`` blocks in a user turn (ahead of any text there, as the API requires). ``max_tokens`` is
required by Anthropic and defaults to 4096; ``temperature``, ``top_p``, ``top_k`` pass through, ``stop``
becomes ``stop_sequences`` and ``user`` ``metadata.user_id``. Tools become ``{name, description,
input_schema}``; ``tool_choice`` auto / required / a named tool / none becomes ``auto`` / ``any`` /
``tool`` / ``none``, and ``parallel_tool_calls: false`` ``disable_parallel_tool_use``. A ``json_schema``
response format becomes ``output_config.format`` (structured outputs). What the API cannot express
(``n`` > 1, logprobs, a JSON response without a schema, token-id prompts) is refused up front with a
:class:`~llmhost.errors.RequestError`; OpenAI-only sampling knobs (``seed``, penalties,
``logit_bias``, ``min_p``) are dropped, and so is ``speculative`` (llmhost's local-engine speed option,
a field the API would refuse). Completions are sent as one user message.

Answer: ``stop_reason`` ``end_turn``/``stop_sequence``/``pause_turn``/``refusal`` -> ``stop`` (with the
matched ``stop_sequence``), ``max_tokens``/``model_context_window_exceeded`` -> ``length``,
``tool_use`` -> ``tool_calls``; usage ``input_tokens`` (+ cache reads and writes) -> ``prompt_tokens``,
cache reads -> ``cached_tokens``, ``output_tokens`` -> ``completion_tokens``. Streams:
``text_delta`` -> text deltas, a ``tool_use`` block start -> the call's id and name, ``input_json_delta``
-> its argument fragments, ``message_stop`` -> the finish and usage deltas; ``ping``, thinking and
unknown events are skipped; an ``error`` event is an error (see ``http``'s module doc).
Token counting uses ``POST /v1/messages/count_tokens``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from llmhost.core.types import (
    ChatMessage,
    Choice,
    ContentPart,
    Delta,
    Embeddings,
    EmbedRequest,
    FinishReason,
    InferenceRequest,
    Result,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llmhost.errors import RequestError
from llmhost.providers.base import refuse_prefix_tokens
from llmhost.providers.http import (
    Timeouts,
    UpstreamClient,
    UpstreamProvider,
    UpstreamReportedError,
    in_band_error,
    iter_sse,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
    "anthropic_sse_deltas",
    "finish_reason",
    "result_from_message",
    "to_messages_request",
]

DEFAULT_MAX_TOKENS = 4096
_FINISH_REASONS: dict[object, FinishReason] = {
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}
_COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "output_config")
_MODELS_PAGE = 1000


def finish_reason(stop_reason: object) -> FinishReason:
    """The core finish reason for an Anthropic ``stop_reason`` (``end_turn``, ``refusal``... -> stop)."""
    return _FINISH_REASONS.get(stop_reason, "stop")


def _stop_sequence(stop_reason: object, stop_sequence: object) -> str | None:
    return stop_sequence if stop_reason == "stop_sequence" and isinstance(stop_sequence, str) else None


def _usage(raw: object) -> Usage:
    u = raw if isinstance(raw, dict) else {}
    cached = int(u.get("cache_read_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + cached + int(u.get("cache_creation_input_tokens") or 0)
    return Usage(prompt, int(u.get("output_tokens") or 0), cached)


# ----- requests --------------------------------------------------------------------------------------
def _image_block(part: ContentPart) -> dict[str, Any]:
    if part.data:
        data = base64.b64encode(part.data).decode()
        source = {"type": "base64", "media_type": part.media_type or "image/png", "data": data}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def _content_blocks(m: ChatMessage) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
    blocks.extend(_image_block(p) for p in m.parts)
    return blocks


def _tool_input(arguments: str, i: int) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        raise RequestError(
            f"messages[{i}]: tool call arguments are not valid JSON", param="messages"
        ) from None
    if not isinstance(value, dict):
        raise RequestError(f"messages[{i}]: tool call arguments must be a JSON object", param="messages")
    return value


def _turn(m: ChatMessage, i: int) -> tuple[str, list[dict[str, Any]]]:
    """The Messages API role and content blocks for one non-system message."""
    if m.role == "tool":
        if not m.tool_call_id:
            raise RequestError(f"messages[{i}]: a tool message needs tool_call_id", param="messages")
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
        if m.parts:
            result["content"] = _content_blocks(m)
        elif m.content:
            result["content"] = m.content  # an empty result is sent without content, as the API asks
        return "user", [result]
    blocks = _content_blocks(m)
    blocks.extend(
        {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments, i)}
        for c in m.tool_calls
    )
    return m.role, blocks


def _messages(request: InferenceRequest) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(request.messages):
        if m.role == "system":
            if m.parts:
                raise RequestError(f"messages[{i}]: system messages take text only", param="messages")
            if m.content:
                system.append(m.content)
            continue
        role, blocks = _turn(m, i)
        if not blocks:
            continue  # the API rejects empty turns; an empty message adds nothing
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    for turn in messages:
        # tool results first in a user turn; the plain-string form where one text block suffices
        turn["content"].sort(key=lambda b: b["type"] != "tool_result")
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    return system, messages


def _tools(request: InferenceRequest, body: dict[str, Any]) -> None:
    choice = request.tool_choice
    if not request.tools:
        if choice.mode in ("required", "tool"):
            raise RequestError("tool_choice needs tools to choose from", param="tool_choice")
        return
    tools = []
    for t in request.tools:
        tool: dict[str, Any] = {"name": t.name, "input_schema": t.parameters}
        if t.description:
            tool["description"] = t.description
        tools.append(tool)
    body["tools"] = tools
    wire: dict[str, Any] | None = None
    if choice.mode == "none":
        body["tool_choice"] = {"type": "none"}
        return
    if choice.mode == "required":
        wire = {"type": "any"}
    elif choice.mode == "tool":
        if choice.name not in {t.name for t in request.tools}:
            raise RequestError(f"tool_choice names an unknown tool {choice.name!r}", param="tool_choice")
        wire = {"type": "tool", "name": choice.name}
    elif not request.parallel_tool_calls:
        wire = {"type": "auto"}
    if wire is not None:
        if not request.parallel_tool_calls:
            wire["disable_parallel_tool_use"] = True
        body["tool_choice"] = wire


def to_messages_request(
    request: InferenceRequest, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """The Messages API body for a chat request, or a completion as one user turn (without ``stream``)."""
    refuse_prefix_tokens(request, "Anthropic Messages API")
    s = request.sampling
    if s.n != 1:
        raise RequestError("n > 1 is not supported by the Anthropic Messages API", param="n")
    if s.logprobs is not None:
        raise RequestError("logprobs are not supported by the Anthropic Messages API", param="logprobs")
    rf = request.response_format
    if rf.type == "json":
        raise RequestError(
            "the Anthropic Messages API takes a JSON schema (response_format json_schema), not any JSON",
            param="response_format",
        )
    if request.kind == "completion":
        if not isinstance(request.prompt, str):
            raise RequestError("the Anthropic provider takes a text prompt, not token ids", param="prompt")
        system: list[str] = []
        messages: list[dict[str, Any]] = [{"role": "user", "content": request.prompt}]
    else:
        system, messages = _messages(request)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": s.max_tokens or default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p", "top_k"):
        value = getattr(s, key)
        if value is not None:
            body[key] = value
    if s.stop:
        body["stop_sequences"] = list(s.stop)
    _tools(request, body)
    if rf.type == "json_schema":
        body["output_config"] = {"format": {"type": "json_schema", "schema": rf.schema}}
    if request.user:
        body["metadata"] = {"user_id": request.user}
    return body


# ----- answers ---------------------------------------------------------------------------------------
def result_from_message(message: dict[str, Any], echo: str = "") -> Result:
    """The :class:`Result` for a Messages API answer (``echo`` goes in front of its text)."""
    texts = [echo]
    calls = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(ToolCall(str(block["id"]), str(block["name"]), json.dumps(block.get("input") or {})))
    stop_reason = message.get("stop_reason")
    choice = Choice(
        0,
        "".join(texts),
        calls,
        finish_reason=finish_reason(stop_reason),
        stop_sequence=_stop_sequence(stop_reason, message.get("stop_sequence")),
    )
    return Result(
        str(message.get("id", "")), str(message.get("model", "")), [choice], _usage(message.get("usage"))
    )


async def anthropic_sse_deltas(lines: AsyncIterator[str]) -> AsyncGenerator[Delta, None]:
    """Decode a Messages API event stream into deltas for choice 0, then the usage delta.

    Each ``tool_use`` block is one tool call: its start gives id and name, ``input_json_delta`` events
    the argument text (``{}`` for a call without any). A stream that ends before ``message_stop``, or
    an ``error`` event, raises :class:`UpstreamReportedError`.
    """
    raw_usage: dict[str, Any] = {}
    stop_reason: object = None
    stop_sequence: object = None
    calls: dict[int, list[Any]] = {}  # content block index -> [call index, arguments seen]
    async for event, data in iter_sse(lines):
        try:
            payload = json.loads(data)
        except ValueError:
            raise UpstreamReportedError(f"upstream sent a {event} event that is not JSON") from None
        kind = payload.get("type", event) if isinstance(payload, dict) else None
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                yield Delta(0, delta["text"])
            elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                call = calls[payload["index"]]
                call[1] = True
                yield Delta(0, tool_calls=(ToolCallDelta(call[0], arguments=delta["partial_json"]),))
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                yield Delta(0, block["text"])
            elif block.get("type") == "tool_use":
                given = block.get("input")  # {} in practice: the arguments follow as input_json_delta
                arguments = json.dumps(given) if given else ""
                call_index = len(calls)
                calls[payload["index"]] = [call_index, bool(arguments)]
                first = ToolCallDelta(call_index, str(block["id"]), str(block["name"]), arguments)
                yield Delta(0, tool_calls=(first,))
        elif kind == "content_block_stop":
            ended = calls.get(payload.get("index"))
            if ended is not None and not ended[1]:
                ended[1] = True
                yield Delta(0, tool_calls=(ToolCallDelta(ended[0], arguments="{}"),))
        elif kind == "message_start":
            raw_usage.update((payload.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            delta = payload.get("delta") or {}
            stop_reason = delta.get("stop_reason", stop_reason)
            stop_sequence = delta.get("stop_sequence", stop_sequence)
            raw_usage.update(payload.get("usage") or {})  # cumulative counts
        elif kind == "message_stop":
            yield Delta(
                0,
                finish_reason=finish_reason(stop_reason),
                stop_sequence=_stop_sequence(stop_reason, stop_sequence),
            )
            yield Delta(-1, usage=_usage(raw_usage))
            return
        elif kind == "error":
            raise in_band_error(payload)
        # ping, thinking blocks and event types added later carry nothing to translate
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

    def _body(self, request: InferenceRequest) -> dict[str, Any]:
        return to_messages_request(request, default_max_tokens=self.default_max_tokens)

    @staticmethod
    def _echo(request: InferenceRequest) -> str:
        return request.prompt if request.echo and isinstance(request.prompt, str) else ""

    async def answer(self, request: InferenceRequest) -> Result:
        answer = await self._http.request_json("POST", "/v1/messages", self._body(request))
        if not isinstance(answer, dict):
            raise self._http.reported_error(UpstreamReportedError("the Messages API answer is not an object"))
        with self._http.translating("Messages API answer"):
            return result_from_message(answer, self._echo(request))

    async def stream(self, request: InferenceRequest) -> AsyncGenerator[Delta, None]:
        body = {**self._body(request), "stream": True}  # refusals raise here, before any request
        echo = self._echo(request)
        deltas = self._http.stream("/v1/messages", body, anthropic_sse_deltas)
        try:
            async for delta in deltas:
                if echo:
                    yield Delta(0, echo)
                    echo = ""
                yield delta
        finally:
            await deltas.aclose()

    async def count_tokens(self, request: InferenceRequest) -> int:
        body = self._body(request)
        answer = await self._http.request_json(
            "POST", "/v1/messages/count_tokens", {k: body[k] for k in _COUNT_FIELDS if k in body}
        )
        with self._http.translating("count_tokens answer"):
            return int(answer["input_tokens"])

    async def embed(self, request: EmbedRequest) -> Embeddings:
        raise RequestError(f"provider '{self.name}': Anthropic has no embeddings API", param="model")

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
