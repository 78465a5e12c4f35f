"""A provider for any OpenAI-compatible server: OpenAI, DeepSeek, vLLM, llama.cpp, Ollama's /v1, llmhost.

Request (core -> ``POST /chat/completions`` or ``/completions``): messages with image parts as
``image_url`` parts (inline images as ``data:`` URLs), assistant ``tool_calls`` and ``role: tool``
answers; every :class:`~llmhost.core.types.Sampling` field that is set (``max_tokens``, ``temperature``,
``top_p``, ``seed``, ``stop``, penalties when non-zero, ``logit_bias``, ``n``; ``top_k``, ``min_p``,
``repeat_penalty`` and ``ignore_eos`` as the extensions vLLM, llama.cpp and llmhost take), ``logprobs``
(chat: ``logprobs: true`` + ``top_logprobs``; completions: ``logprobs: N``), ``response_format``
(``json_object`` / ``json_schema``), ``tools`` / ``tool_choice`` / ``parallel_tool_calls``, ``user``,
a chat's ``prediction`` (Predicted Outputs).
``speculative`` is never sent: it is llmhost's local-engine speed option, and OpenAI refuses unknown
fields.

Answer: choices -> :class:`~llmhost.core.types.Choice` (``tool_calls``/``function_call`` finish ->
``tool_calls``, ``length`` -> ``length``, anything else -> ``stop``; the matched stop string when the
server says which, as vLLM's ``stop_reason`` does), usage with ``prompt_tokens_details.cached_tokens``.
Streams always ask for usage (``stream_options.include_usage``); chunks become
:class:`~llmhost.core.types.Delta` objects per choice (text, tool-call fragments, logprobs, then the
finish) and ``data: [DONE]`` the final usage delta. Role-only chunks yield nothing, so the first delta
is the first output (see ``http``'s module doc).

This is the gateway's hot path: one ``json.dumps`` out, one ``json.loads`` back, one reused keep-alive
client, no models or validation in between.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
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
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    new_id,
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
    "OpenAICompatProvider",
    "chat_body",
    "completion_body",
    "openai_sse_deltas",
    "result_from_answer",
]

_FINISH: dict[object, FinishReason] = {
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


def _finish(raw: object, stops: tuple[str, ...], stop_reason: object) -> tuple[FinishReason, str | None]:
    finish = _FINISH.get(raw, "stop")
    stop = stop_reason if finish == "stop" and isinstance(stop_reason, str) and stop_reason in stops else None
    return finish, stop


def _usage(raw: object) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0), int(cached or 0))


# ----- requests --------------------------------------------------------------------------------------
def _image_url(part: ContentPart) -> dict[str, Any]:
    if part.data:
        url = f"data:{part.media_type or 'image/png'};base64,{base64.b64encode(part.data).decode()}"
    else:
        url = part.url
    return {"type": "image_url", "image_url": {"url": url}}


def _message(m: ChatMessage) -> dict[str, Any]:
    content: Any = m.content
    if m.parts:
        content = [{"type": "text", "text": m.content}] if m.content else []
        content.extend(_image_url(p) for p in m.parts)
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.tool_calls:
        out["content"] = content or None  # OpenAI's own shape for an assistant turn that only calls
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    return out


def _common(request: InferenceRequest, body: dict[str, Any], max_tokens_field: str) -> None:
    """The sampling, format and user fields both endpoints share, set only where the request sets them."""
    refuse_prefix_tokens(request, "OpenAI-compatible API")
    s = request.sampling
    if s.max_tokens is not None:
        body[max_tokens_field] = s.max_tokens
    for key in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"):
        value = getattr(s, key)
        if value is not None:
            body[key] = value
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias.items()}
    if s.stop:
        body["stop"] = list(s.stop)
    if s.ignore_eos:
        body["ignore_eos"] = True
    if s.n != 1:
        body["n"] = s.n
    rf = request.response_format
    if rf.type == "json":
        body["response_format"] = {"type": "json_object"}
    elif rf.type == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": rf.name, "schema": rf.schema},
        }
    if request.user:
        body["user"] = request.user


def _function(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return function


def chat_body(request: InferenceRequest, *, max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """The ``/chat/completions`` body for a chat request (without ``stream``)."""
    body: dict[str, Any] = {"model": request.model, "messages": [_message(m) for m in request.messages]}
    _common(request, body, max_tokens_field)
    if request.sampling.prediction:
        body["prediction"] = {"type": "content", "content": request.sampling.prediction}
    if request.sampling.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = request.sampling.logprobs
    if request.tools:
        body["tools"] = [{"type": "function", "function": _function(t)} for t in request.tools]
        choice = request.tool_choice
        if choice.mode == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice.mode != "auto":
            body["tool_choice"] = choice.mode
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    elif request.tool_choice.mode in ("required", "tool"):
        raise RequestError("tool_choice needs tools to choose from", param="tool_choice")
    return body


def completion_body(request: InferenceRequest) -> dict[str, Any]:
    """The ``/completions`` body for a completion request (without ``stream``)."""
    if request.tools:
        raise RequestError("tools need a chat request, not a completion", param="tools")
    prompt = request.prompt if isinstance(request.prompt, str) else list(request.prompt)
    body: dict[str, Any] = {"model": request.model, "prompt": prompt}
    _common(request, body, "max_tokens")
    if request.sampling.logprobs is not None:
        body["logprobs"] = request.sampling.logprobs
    if request.echo:
        body["echo"] = True
    return body


# ----- answers ---------------------------------------------------------------------------------------
def _token_bytes(entry: dict[str, Any]) -> bytes:
    raw = entry.get("bytes")
    return bytes(raw) if isinstance(raw, list) else str(entry.get("token", "")).encode()


def _chat_logprobs(raw: object) -> list[TokenLogprob]:
    """``logprobs.content`` of a chat choice: one entry per token with its ``top_logprobs``."""
    content = raw.get("content") if isinstance(raw, dict) else None
    return [
        TokenLogprob(
            _token_bytes(e),
            float(e["logprob"]),
            tuple((_token_bytes(t), float(t["logprob"])) for t in e.get("top_logprobs") or ()),
        )
        for e in content or ()
    ]


def _text_logprobs(raw: object) -> list[TokenLogprob]:
    """A completions choice's column-wise ``logprobs``: ``tokens``, ``token_logprobs``, ``top_logprobs``."""
    if not isinstance(raw, dict):
        return []
    tops = raw.get("top_logprobs") or []
    out = []
    for i, (token, logprob) in enumerate(
        zip(raw.get("tokens") or (), raw.get("token_logprobs") or (), strict=False)
    ):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        ranked = sorted(top.items(), key=lambda kv: kv[1], reverse=True)
        # the first echoed prompt token has no logprob (null): nothing came before it
        out.append(
            TokenLogprob(
                str(token).encode(), float(logprob or 0.0), tuple((t.encode(), lp) for t, lp in ranked)
            )
        )
    return out


def _calls(raw: object) -> list[ToolCall]:
    calls = []
    for c in raw if isinstance(raw, list) else ():
        fn = c["function"]
        calls.append(
            ToolCall(str(c.get("id") or new_id("call")), str(fn["name"]), fn.get("arguments") or "{}")
        )
    return calls


def result_from_answer(answer: dict[str, Any], request: InferenceRequest) -> Result:
    """The :class:`Result` for a ``chat.completion`` or ``text_completion`` answer."""
    chat = request.kind == "chat"
    stops = request.sampling.stop
    choices = []
    for position, raw in enumerate(answer["choices"]):
        choice = Choice(int(raw.get("index", position)))
        if chat:
            message = raw["message"]
            choice.text = message.get("content") or ""
            choice.tool_calls = _calls(message.get("tool_calls"))
        else:
            choice.text = raw.get("text") or ""
        if request.sampling.logprobs is not None:
            choice.logprobs = (_chat_logprobs if chat else _text_logprobs)(raw.get("logprobs"))
        choice.finish_reason, choice.stop_sequence = _finish(
            raw.get("finish_reason"), stops, raw.get("stop_reason")
        )
        if choice.tool_calls and choice.finish_reason == "stop":
            choice.finish_reason = "tool_calls"  # some servers say "stop" after calls
        choices.append(choice)
    result = Result(
        str(answer.get("id") or new_id("chatcmpl")),
        str(answer.get("model") or request.model),
        choices,
        _usage(answer.get("usage")),
    )
    if isinstance(answer.get("created"), int):
        result.created = answer["created"]
    return result


def _stream_delta(choice: dict[str, Any], chat: bool, called: set[int]) -> Delta | None:
    """The output delta of one streamed choice (finish aside), or None for a role-only fragment."""
    index = int(choice.get("index") or 0)
    logprobs: list[TokenLogprob] = []
    calls: tuple[ToolCallDelta, ...] = ()
    if chat:
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        raw_calls = delta.get("tool_calls")
        if raw_calls:
            calls = tuple(
                ToolCallDelta(
                    int(c.get("index") or 0),
                    c.get("id"),
                    (c.get("function") or {}).get("name"),
                    (c.get("function") or {}).get("arguments") or "",
                )
                for c in raw_calls
            )
            called.add(index)
        if choice.get("logprobs"):
            logprobs = _chat_logprobs(choice["logprobs"])
    else:
        text = choice.get("text") or ""
        if choice.get("logprobs"):
            logprobs = _text_logprobs(choice["logprobs"])
    if not (text or calls or logprobs):
        return None
    return Delta(index, text, calls, tuple(logprobs))


async def openai_sse_deltas(
    lines: AsyncIterator[str], *, chat: bool = True, stops: tuple[str, ...] = ()
) -> AsyncGenerator[Delta, None]:
    """Decode an OpenAI SSE stream (chat or completions chunks) into deltas, up to ``data: [DONE]``.

    Per choice: text, tool-call fragments and logprobs as they come, then a finish delta; at
    ``[DONE]``, one ``index == -1`` delta with the usage the last usage-bearing chunk reported (zero
    when the server sends none). An ``{"error": ...}`` event, a malformed event, or an end without
    ``[DONE]`` raises :class:`UpstreamReportedError`.
    """
    usage = Usage()
    called: set[int] = set()  # choices that made tool calls (some servers then finish with "stop")
    async for _event, data in iter_sse(lines):
        if data == "[DONE]":
            yield Delta(-1, usage=usage)
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamReportedError("upstream sent an event that is not JSON") from None
        if not isinstance(chunk, dict):
            raise UpstreamReportedError("upstream sent an event that is not a JSON object")
        if "error" in chunk and not chunk.get("choices"):
            raise in_band_error(chunk)
        if chunk.get("usage"):
            usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            delta = _stream_delta(choice, chat, called)
            if delta is not None:
                yield delta
            raw_finish = choice.get("finish_reason")
            if raw_finish is not None:
                index = int(choice.get("index") or 0)
                finish, stop = _finish(raw_finish, stops, choice.get("stop_reason"))
                if finish == "stop" and index in called:
                    finish = "tool_calls"
                yield Delta(index, finish_reason=finish, stop_sequence=stop)
    raise UpstreamReportedError("the stream ended before data: [DONE]")


class OpenAICompatProvider(UpstreamProvider):
    """An OpenAI-compatible upstream at ``base_url`` (e.g. ``http://127.0.0.1:9000/v1``).

    ``api_key`` is sent as ``Authorization: Bearer``; ``extra_headers`` go with every request (header
    values whose names look secret — ``*key*``, ``*token*``, ``*auth*`` — are scrubbed like the key).
    ``health_path`` is probed with GET, relative to ``base_url`` or an absolute URL.
    ``max_tokens_field`` names the chat limit field: ``max_tokens`` (what every compatible server reads)
    or ``max_completion_tokens`` (what OpenAI's reasoning models require).
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
        max_tokens_field: str = "max_tokens",
    ) -> None:
        self.name = name
        headers = {"content-type": "application/json"}
        headers.update(extra_headers or {})
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._health_path = health_path
        self._max_tokens_field = max_tokens_field
        self._http = UpstreamClient(
            name,
            base_url,
            headers=headers,
            timeouts=timeouts,
            secrets=(api_key,),
            max_connections=max_connections,
        )

    def _request(self, request: InferenceRequest) -> tuple[str, dict[str, Any]]:
        if request.kind == "chat":
            return "/chat/completions", chat_body(request, max_tokens_field=self._max_tokens_field)
        return "/completions", completion_body(request)

    async def answer(self, request: InferenceRequest) -> Result:
        path, body = self._request(request)
        answer = await self._http.request_json("POST", path, body)
        if not isinstance(answer, dict):
            raise self._http.reported_error(UpstreamReportedError(f"{path} answered with a non-object"))
        with self._http.translating(f"{path} answer"):
            return result_from_answer(answer, request)

    def stream(self, request: InferenceRequest) -> AsyncGenerator[Delta, None]:
        path, body = self._request(request)  # a refused request raises here, before any connection
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        chat, stops = request.kind == "chat", request.sampling.stop

        def decode(lines: AsyncIterator[str]) -> AsyncGenerator[Delta, None]:
            return openai_sse_deltas(lines, chat=chat, stops=stops)

        return self._http.stream(path, body, decode)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        # Float vectors always: base64 (if the client wants it) is the door's business.
        inputs = [x if isinstance(x, str) else list(x) for x in request.inputs]
        body: dict[str, Any] = {"model": request.model, "input": inputs, "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user:
            body["user"] = request.user
        answer = await self._http.request_json("POST", "/embeddings", body)
        with self._http.translating("/embeddings answer"):
            data = sorted(answer["data"], key=lambda d: int(d.get("index", 0)))
            vectors = [[float(x) for x in d["embedding"]] for d in data]
            usage = _usage(answer.get("usage"))
            model = str(answer.get("model") or request.model)
        if len(vectors) != len(inputs):
            raise self._http.reported_error(
                UpstreamReportedError("/embeddings answered without one embedding per input")
            )
        return Embeddings(vectors, usage, model=model)

    async def list_models(self) -> list[str]:
        answer = await self._http.request_json("GET", "/models", timeout=min(self.timeouts.total, 30.0))
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise self._http.reported_error(UpstreamReportedError("GET /models answered without a data list"))
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def health(self) -> bool:
        return await self._http.probe(self._health_path)
