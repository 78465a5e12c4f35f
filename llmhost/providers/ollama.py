"""A provider for Ollama's native API: ``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``.

Request: sampling fields go into ``options`` (``temperature``, ``top_p``, ``top_k``, ``min_p``, ``seed``,
``stop``, the penalties, ``repeat_penalty``; ``max_tokens`` -> ``num_predict``); ``logprobs`` ->
``logprobs: true`` + ``top_logprobs``; ``response_format`` ``json`` -> ``format: "json"``,
``json_schema`` -> ``format: <schema>``; inline images go to the message's ``images`` (base64; Ollama
takes no image URLs). Tools are sent as ``tools`` (function tools); an assistant's calls as
``tool_calls`` with the arguments as an object, and ``role: tool`` answers with ``tool_name`` (looked up
from the call they answer when the door did not say) and ``tool_call_id``. Ollama has no
``tool_choice``: ``none`` leaves the tools out, ``required`` and a named tool are refused, like ``n`` > 1,
since Ollama cannot force them. Completions use ``/api/generate`` with ``raw: true`` (they continue
the prompt as given, without a chat template); ``logit_bias`` and ``ignore_eos`` have no Ollama option
and are dropped, as is ``speculative`` (llmhost's local-engine speed option). Ollama has no token
counting API.

Answer: ``done_reason`` ``length`` -> ``length``, a message with tool calls -> ``tool_calls``, anything
else -> ``stop``; ``prompt_eval_count`` and ``eval_count`` -> usage. Streams are NDJSON: each line's
``message.content`` (or ``response``) becomes a text delta, its ``tool_calls`` (Ollama sends each call
whole) one tool-call delta each, its ``logprobs`` logprob deltas; the ``done: true`` line becomes the
finish and usage deltas; an ``{"error": ...}`` line, or an end without ``done``, is an error (see
``http``'s module doc).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from llmhost.core.types import (
    ChatMessage,
    Choice,
    Delta,
    Embeddings,
    EmbedRequest,
    FinishReason,
    InferenceRequest,
    Result,
    TokenLogprob,
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
)

__all__ = ["OllamaProvider", "ollama_deltas", "to_ollama_chat", "to_ollama_generate", "to_ollama_options"]

_OPTION_NAMES = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "repeat_penalty",
)


def _finish(done_reason: object, called: bool) -> FinishReason:
    if done_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"


def _usage(answer: dict[str, Any]) -> Usage:
    return Usage(int(answer.get("prompt_eval_count") or 0), int(answer.get("eval_count") or 0))


def _token_bytes(entry: dict[str, Any]) -> bytes:
    raw = entry.get("bytes")
    return bytes(raw) if isinstance(raw, list) else str(entry.get("token", "")).encode()


def _logprobs(raw: object) -> list[TokenLogprob]:
    """A response's ``logprobs``: ``[{token, logprob, bytes, top_logprobs: [...]}]``."""
    return [
        TokenLogprob(
            _token_bytes(e),
            float(e["logprob"]),
            tuple((_token_bytes(t), float(t["logprob"])) for t in e.get("top_logprobs") or ()),
        )
        for e in (raw if isinstance(raw, list) else ())
    ]


def _calls(message: object) -> list[ToolCall]:
    raw = message.get("tool_calls") if isinstance(message, dict) else None
    calls = []
    for c in raw or ():
        fn = c["function"]
        arguments = fn.get("arguments")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        calls.append(ToolCall(str(c.get("id") or new_id("call")), str(fn["name"]), text))
    return calls


# ----- requests --------------------------------------------------------------------------------------
def to_ollama_options(request: InferenceRequest) -> dict[str, Any]:
    """Ollama's ``options`` for the request's sampling; refuses what Ollama's native API cannot do."""
    s = request.sampling
    if s.n != 1:
        raise RequestError("n > 1 is not supported by Ollama", param="n")
    options: dict[str, Any] = {key: getattr(s, key) for key in _OPTION_NAMES if getattr(s, key) is not None}
    if s.presence_penalty:
        options["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        options["frequency_penalty"] = s.frequency_penalty
    if s.max_tokens is not None:
        options["num_predict"] = s.max_tokens
    if s.stop:
        options["stop"] = list(s.stop)
    return options


def _shared(request: InferenceRequest, body: dict[str, Any]) -> None:
    """Options, format and logprobs, which /api/chat and /api/generate share."""
    refuse_prefix_tokens(request, "Ollama API")
    options = to_ollama_options(request)
    if options:
        body["options"] = options
    rf = request.response_format
    if rf.type == "json":
        body["format"] = "json"
    elif rf.type == "json_schema":
        body["format"] = rf.schema or "json"
    if request.sampling.logprobs is not None:
        body["logprobs"] = True
        if request.sampling.logprobs:
            body["top_logprobs"] = request.sampling.logprobs


def _message(m: ChatMessage, i: int, tool_names: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.parts:
        if any(not p.data for p in m.parts):
            raise RequestError(
                f"messages[{i}]: Ollama takes inline (base64) images only, not image URLs", param="messages"
            )
        out["images"] = [base64.b64encode(p.data).decode() for p in m.parts]
    if m.tool_calls:
        calls = []
        for j, c in enumerate(m.tool_calls):
            try:
                arguments = json.loads(c.arguments) if c.arguments.strip() else {}
            except ValueError:
                raise RequestError(
                    f"messages[{i}]: tool call arguments are not valid JSON", param="messages"
                ) from None
            calls.append({"id": c.id, "function": {"index": j, "name": c.name, "arguments": arguments}})
            tool_names[c.id] = c.name
        out["tool_calls"] = calls
    if m.role == "tool":
        name = m.name or tool_names.get(m.tool_call_id or "")
        if name:
            out["tool_name"] = name
        if m.tool_call_id:
            out["tool_call_id"] = m.tool_call_id
    return out


def to_ollama_chat(request: InferenceRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/api/chat`` body for a chat request."""
    tool_names: dict[str, str] = {}
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m, i, tool_names) for i, m in enumerate(request.messages)],
        "stream": stream,
    }
    choice = request.tool_choice
    if choice.mode in ("required", "tool"):
        raise RequestError(
            f"tool_choice {choice.mode!r} is not supported by Ollama (it cannot force a tool call)",
            param="tool_choice",
        )
    if request.tools and choice.mode != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
    _shared(request, body)
    return body


def to_ollama_generate(request: InferenceRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/api/generate`` body (raw: no template) for a completion request."""
    if not isinstance(request.prompt, str):
        raise RequestError("the Ollama provider takes a text prompt, not token ids", param="prompt")
    if request.tools:
        raise RequestError("tools need a chat request, not a completion", param="tools")
    body: dict[str, Any] = {"model": request.model, "prompt": request.prompt, "stream": stream, "raw": True}
    _shared(request, body)
    return body


# ----- answers ---------------------------------------------------------------------------------------
def _result(answer: dict[str, Any], request: InferenceRequest, echo: str) -> Result:
    if request.kind == "chat":
        message = answer.get("message") or {}
        text = str(message.get("content") or "")
        calls = _calls(message)
    else:
        text, calls = str(answer.get("response") or ""), []
    choice = Choice(0, echo + text, calls, finish_reason=_finish(answer.get("done_reason"), bool(calls)))
    if request.sampling.logprobs is not None:
        choice.logprobs = _logprobs(answer.get("logprobs"))
    return Result(new_id("ollama"), str(answer.get("model") or request.model), [choice], _usage(answer))


async def ollama_deltas(lines: AsyncIterator[str], *, chat: bool = True) -> AsyncGenerator[Delta, None]:
    """Decode an ``/api/chat`` (or, ``chat=False``, ``/api/generate``) NDJSON stream into deltas."""
    n_calls = 0
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
        if chat:
            message = answer.get("message") or {}
            text = message.get("content") or ""
            calls = _calls(message)
        else:
            text, calls = answer.get("response") or "", []
        logprobs = _logprobs(answer.get("logprobs"))
        if text or calls or logprobs:
            fragments = tuple(
                ToolCallDelta(n_calls + k, c.id, c.name, c.arguments) for k, c in enumerate(calls)
            )
            n_calls += len(calls)
            yield Delta(0, text, fragments, tuple(logprobs))
        if answer.get("done"):
            yield Delta(0, finish_reason=_finish(answer.get("done_reason"), n_calls > 0))
            yield Delta(-1, usage=_usage(answer))
            return
    raise UpstreamReportedError("the stream ended before its done line")


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

    @staticmethod
    def _request(request: InferenceRequest, *, stream: bool) -> tuple[str, dict[str, Any]]:
        if request.kind == "chat":
            return "/api/chat", to_ollama_chat(request, stream=stream)
        return "/api/generate", to_ollama_generate(request, stream=stream)

    @staticmethod
    def _echo(request: InferenceRequest) -> str:
        return request.prompt if request.echo and isinstance(request.prompt, str) else ""

    async def answer(self, request: InferenceRequest) -> Result:
        path, body = self._request(request, stream=False)
        answer = await self._post(path, body)
        with self._http.translating(f"{path} answer"):
            return _result(answer, request, self._echo(request))

    async def stream(self, request: InferenceRequest) -> AsyncGenerator[Delta, None]:
        path, body = self._request(request, stream=True)  # refusals raise here, before any request
        chat, echo = request.kind == "chat", self._echo(request)

        def decode(lines: AsyncIterator[str]) -> AsyncGenerator[Delta, None]:
            return ollama_deltas(lines, chat=chat)

        deltas = self._http.stream(path, body, decode)
        try:
            async for delta in deltas:
                if echo:
                    yield Delta(0, echo)
                    echo = ""
                yield delta
        finally:
            await deltas.aclose()

    async def embed(self, request: EmbedRequest) -> Embeddings:
        inputs = request.inputs
        if not all(isinstance(item, str) for item in inputs):
            raise RequestError("the Ollama provider embeds text, not token ids", param="input")
        body: dict[str, Any] = {"model": request.model, "input": list(inputs), "truncate": request.truncate}
        if request.dimensions:
            body["dimensions"] = request.dimensions
        answer = await self._post("/api/embed", body)
        vectors = answer.get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(inputs):
            raise self._http.reported_error(
                UpstreamReportedError("/api/embed answered without one embedding per input")
            )
        with self._http.translating("/api/embed answer"):
            floats = [[float(x) for x in v] for v in vectors]
            usage = Usage(prompt_tokens=int(answer.get("prompt_eval_count") or 0))
        return Embeddings(floats, usage, model=str(answer.get("model") or request.model))

    async def list_models(self) -> list[str]:
        answer = await self._http.request_json("GET", "/api/tags", timeout=min(self.timeouts.total, 30.0))
        models = answer.get("models") if isinstance(answer, dict) else None
        if not isinstance(models, list):
            raise self._http.reported_error(UpstreamReportedError("/api/tags answered without a models list"))
        return [str(m.get("name") or m.get("model")) for m in models if isinstance(m, dict)]

    async def health(self) -> bool:
        return await self._http.probe("/api/version")
