"""OpenAI's wire format <-> core types: requests in, ``chat.completion`` / ``text_completion`` objects
and their SSE chunks out, and OpenAI's error envelope. The only place that builds OpenAI answers."""

from __future__ import annotations

import base64
import binascii
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi.responses import JSONResponse

from llmhost.core.types import (
    ChatMessage,
    Choice,
    ContentPart,
    Delta,
    Embeddings,
    EmbedRequest,
    InferenceRequest,
    ResponseFormat,
    Result,
    Sampling,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from llmhost.doors.common import stream_json, token_logprobs
from llmhost.doors.openai import protocol as wire
from llmhost.errors import ErrorInfo, LLMHostError, RequestError, classify

__all__ = [
    "chat_request",
    "chat_response",
    "completion_requests",
    "completion_response",
    "embed_request",
    "embeddings_response",
    "error_body",
    "render_error",
    "sse_chat",
    "sse_completion",
]

log = logging.getLogger(__name__)

_DONE = b"data: [DONE]\n\n"

_TYPES = {
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "invalid_request_error",
    "rate_limit": "rate_limit_error",
    "overloaded": "rate_limit_error",
    "timeout": "server_error",
    "upstream": "server_error",
    "server": "server_error",
}


# ----- errors ----------------------------------------------------------------------------------------
def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def info_body(info: ErrorInfo) -> dict[str, Any]:
    type_ = _TYPES.get(info.kind, "invalid_request_error")
    if info.kind == "overloaded" and info.status == 503:
        type_ = "server_error"
    return error_body(info.message, type_, info.param, info.code)


def render_error(info: ErrorInfo) -> JSONResponse:
    """OpenAI's envelope, ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse(info_body(info), status_code=info.status, headers=info.headers or None)


# ----- requests --------------------------------------------------------------------------------------
def _image(url: str) -> ContentPart:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";")[0]
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("image_url data URL is not valid base64", param="messages") from None
        return ContentPart("image", media_type=media_type, data=raw)
    return ContentPart("image", url=url)


def _message(m: wire.ChatMessage, i: int, function_calls: dict[str, str]) -> ChatMessage:
    """One message; ``function_calls`` maps a deprecated ``function_call``'s name to the id it was
    given, so the ``function`` message after it answers it as a tool message."""
    role = "system" if m.role == "developer" else m.role
    texts: list[str] = []
    parts: list[ContentPart] = []
    if isinstance(m.content, str):
        texts.append(m.content)
    elif m.content is not None:
        for part in m.content:
            if isinstance(part, wire.TextPart):
                texts.append(part.text)
            elif isinstance(part, wire.RefusalPart) and role == "assistant":
                texts.append(part.refusal)
            elif isinstance(part, wire.ImagePart):
                parts.append(_image(part.image_url.url))
            else:
                raise RequestError(
                    f"messages[{i}]: content part type '{part.type}' is not supported in a {m.role} message",
                    param="messages",
                )
    if m.refusal and role == "assistant" and not texts:
        texts.append(m.refusal)
    calls = [
        ToolCall(c.id or f"call_{i}_{j}", c.function.name, c.function.arguments)
        for j, c in enumerate(m.tool_calls or ())
    ]
    if m.function_call is not None:
        calls.append(ToolCall(f"call_{i}_fn", m.function_call.name, m.function_call.arguments))
        function_calls[m.function_call.name] = calls[-1].id
    if calls and role != "assistant":
        raise RequestError(f"messages[{i}]: only assistant messages carry tool_calls", param="messages")
    tool_call_id = m.tool_call_id
    if role == "function":
        if not m.name or m.name not in function_calls:
            raise RequestError(
                f"messages[{i}]: a message with role 'function' must name a function an earlier "
                "assistant message called (function_call)",
                param="messages",
            )
        role, tool_call_id = "tool", function_calls[m.name]
    if role == "tool" and not tool_call_id:
        raise RequestError(f"messages[{i}]: a tool message needs tool_call_id", param="messages")
    return ChatMessage(role, "".join(texts), tuple(parts), tuple(calls), tool_call_id, m.name)


def _messages(wire_messages: Sequence[wire.ChatMessage]) -> tuple[ChatMessage, ...]:
    """The history, checked as OpenAI checks it: each tool message answers an earlier assistant call."""
    messages: list[ChatMessage] = []
    calls: set[str] = set()
    function_calls: dict[str, str] = {}
    for i, m in enumerate(wire_messages):
        message = _message(m, i, function_calls)
        calls.update(c.id for c in message.tool_calls)
        if message.role == "tool" and message.tool_call_id not in calls:
            raise RequestError(
                f"messages[{i}]: a message with role 'tool' must answer a preceding assistant message's "
                f"tool_calls (no call has id {message.tool_call_id!r})",
                param="messages",
            )
        messages.append(message)
    return tuple(messages)


def _response_format(rf: wire.ResponseFormat | None) -> ResponseFormat:
    if rf is None or rf.type == "text":
        return ResponseFormat()
    if rf.type == "json_object":
        return ResponseFormat("json")
    spec = rf.json_schema
    if spec is None or not isinstance(spec.schema_, dict):
        raise RequestError("response_format.json_schema.schema is required", param="response_format")
    return ResponseFormat("json_schema", spec.schema_, spec.name)


def _sampling(req: wire.ChatCompletionRequest | wire.CompletionRequest, logprobs: int | None) -> Sampling:
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        try:
            bias[int(key)] = float(value)
        except ValueError:
            raise RequestError(f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    prediction = getattr(req, "prediction", None)
    return Sampling(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repeat_penalty=req.repeat_penalty,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=bias,
        stop=stop,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        n=req.n,
        speculative=req.speculative,
        prediction=prediction.text if prediction is not None else None,
    )


def _tool_choice(choice: wire.ToolChoiceField | None, has_tools: bool) -> ToolChoice:
    if choice is None:
        return ToolChoice("auto" if has_tools else "none")
    if isinstance(choice, wire.NamedToolChoice):
        return ToolChoice("tool", choice.function.name)
    if isinstance(choice, wire.AllowedToolsChoice):
        return ToolChoice(choice.allowed_tools.mode)
    return ToolChoice(choice)


def _tool(f: wire.FunctionDef) -> Tool:
    parameters = f.parameters if f.parameters is not None else {"type": "object", "properties": {}}
    return Tool(f.name, f.description or "", parameters)


def _tools(req: wire.ChatCompletionRequest) -> tuple[tuple[Tool, ...], wire.ToolChoiceField | None]:
    """``tools`` and ``tool_choice``, from the deprecated ``functions`` / ``function_call`` too; an
    ``allowed_tools`` choice keeps only the tools it names."""
    if req.functions is not None:
        if req.tools is not None:
            raise RequestError("send either tools or the deprecated functions, not both", param="functions")
        fc = req.function_call
        choice: wire.ToolChoiceField | None = (
            wire.NamedToolChoice(type="function", function=fc) if isinstance(fc, wire.NamedFunction) else fc
        )
        return tuple(_tool(f) for f in req.functions), choice
    tools = tuple(_tool(t.function) for t in req.tools or ())
    choice = req.tool_choice
    if isinstance(choice, wire.AllowedToolsChoice):
        allowed = [t.function.name for t in choice.allowed_tools.tools]
        unknown = sorted(set(allowed) - {t.name for t in tools})
        if unknown:
            raise RequestError(
                f"tool_choice.allowed_tools names tools that are not in tools: {', '.join(unknown)}",
                param="tool_choice",
            )
        tools = tuple(t for t in tools if t.name in allowed)
    return tools, choice


def chat_request(req: wire.ChatCompletionRequest) -> InferenceRequest:
    if req.top_logprobs is not None and not req.logprobs:
        raise RequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    tools, choice = _tools(req)
    parallel = req.parallel_tool_calls is not False and req.functions is None  # functions: one call
    return InferenceRequest(
        "chat",
        req.model,
        messages=_messages(req.messages),
        sampling=_sampling(req, logprobs),
        response_format=_response_format(req.response_format),
        tools=tools,
        tool_choice=_tool_choice(choice, bool(tools)),
        parallel_tool_calls=parallel,
        user=req.user,
    )


MAX_PROMPTS = 64  # prompts in one /v1/completions request: each runs as a request of its own


def completion_requests(req: wire.CompletionRequest) -> list[InferenceRequest]:
    """One request per prompt: ``prompt`` is a string, a token list, or a list of either."""
    p = req.prompt
    prompts: list[str | tuple[int, ...]]
    if isinstance(p, str):
        prompts = [p]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [tuple(int(x) for x in p)]  # type: ignore[arg-type]
    else:
        prompts = [x if isinstance(x, str) else tuple(int(t) for t in x) for x in p]  # type: ignore[union-attr]
    if not prompts:
        raise RequestError("prompt must not be an empty list", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"at most {MAX_PROMPTS} prompts per request are supported", param="prompt")
    if req.suffix:
        raise RequestError("suffix is not supported", param="suffix")
    if req.best_of not in (None, 1):
        raise RequestError("only best_of=1 is supported", param="best_of")
    sampling = _sampling(req, req.logprobs)
    response_format = _response_format(req.response_format)
    return [
        InferenceRequest(
            "completion",
            req.model,
            prompt=prompt,
            sampling=sampling,
            response_format=response_format,
            echo=req.echo,
            user=req.user,
        )
        for prompt in prompts
    ]


def embed_request(req: wire.EmbeddingRequest) -> EmbedRequest:
    raw = req.input
    inputs: list[str | tuple[int, ...]]
    if isinstance(raw, str):
        inputs = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        inputs = [tuple(int(x) for x in raw)]  # type: ignore[arg-type]
    else:
        inputs = [x if isinstance(x, str) else tuple(x) for x in raw]  # type: ignore[arg-type]
    return EmbedRequest(req.model, tuple(inputs), req.dimensions, req.user)


# ----- answers ---------------------------------------------------------------------------------------
def _usage(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _token_str(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def chat_logprobs(items: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI chat ``logprobs`` object: one entry per token with its ``top_logprobs``."""
    return {"content": token_logprobs(items), "refusal": None}


def completion_logprobs(items: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    """OpenAI legacy completions ``logprobs`` object; ``offset`` is the text offset of the first token."""
    tokens: list[str] = []
    offsets: list[int] = []
    for item in items:
        tokens.append(_token_str(item.token))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [item.logprob for item in items],
        "top_logprobs": [
            {_token_str(raw): lp for raw, lp in (*item.top, (item.token, item.logprob))} for item in items
        ],
        "text_offset": offsets,
    }


def _tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def _chat_choice(choice: Choice, functions: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.text if choice.text or not choice.tool_calls else None,
        "refusal": None,
    }
    finish: str | None = choice.finish_reason
    if choice.tool_calls and functions:  # the deprecated functions API: one call, as function_call
        call = choice.tool_calls[0]
        message["function_call"] = {"name": call.name, "arguments": call.arguments}
        finish = "function_call" if finish == "tool_calls" else finish
    elif choice.tool_calls:
        message["tool_calls"] = _tool_calls(choice.tool_calls)
    return {
        "index": choice.index,
        "message": message,
        "logprobs": chat_logprobs(choice.logprobs) if choice.logprobs is not None else None,
        "finish_reason": finish,
    }


def chat_response(result: Result, functions: bool = False) -> dict[str, Any]:
    """A ``chat.completion``; ``functions``: the request used the deprecated ``functions``."""
    body = {
        "id": result.id,
        "object": "chat.completion",
        "created": result.created,
        "model": result.model,
        "system_fingerprint": None,
        "choices": [_chat_choice(c, functions) for c in result.choices],
        "usage": _usage(result.usage),
    }
    if result.ensemble is not None:  # llmhost extension: how an ensemble reached its answer
        body["ensemble"] = result.ensemble
    if result.citations is not None:  # llmhost extension: an agent's retrieved sources, as numbered
        body["citations"] = result.citations
    return body


def completion_response(result: Result) -> dict[str, Any]:
    return {
        "id": result.id,
        "object": "text_completion",
        "created": result.created,
        "model": result.model,
        "system_fingerprint": None,
        "choices": [
            {
                "text": c.text,
                "index": c.index,
                "logprobs": completion_logprobs(c.logprobs, 0) if c.logprobs is not None else None,
                "finish_reason": c.finish_reason,
            }
            for c in result.choices
        ],
        "usage": _usage(result.usage),
        **({"ensemble": result.ensemble} if result.ensemble is not None else {}),
    }


def embeddings_response(result: Embeddings, encoding_format: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    for i, vec in enumerate(result.vectors):
        embedding: Any = vec
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.prompt_tokens},
    }


# ----- streams ---------------------------------------------------------------------------------------
def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + stream_json(payload) + b"\n\n"


def _error_event(exc: BaseException) -> bytes:
    if not isinstance(exc, LLMHostError):
        log.warning("stream ended with an unexpected error", exc_info=exc)
    info = classify(exc)
    log.warning("stream ended with an error: %s", info.message)
    return _sse(info_body(info))


async def sse_chat(
    deltas: AsyncIterator[Delta],
    id_: str,
    model: str,
    created: int,
    include_usage: bool,
    citations: list[dict[str, Any]] | None = None,
    functions: bool = False,
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events, ``[DONE]`` last; a failure mid-stream as one error event.
    An agent's ``citations`` (llmhost extension) ride on the first chunk; ``functions``: the request
    used the deprecated ``functions``, so the call streams as ``function_call`` deltas."""
    head = (
        f'{{"id":"{id_}","object":"chat.completion.chunk","created":{created},'
        f'"model":{stream_json(model).decode()},"system_fingerprint":null,'
    ).encode()
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
    started: set[int] = set()

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return b"data: " + head + b'"choices":[' + stream_json(choice) + b"]" + tail

    try:
        async for d in deltas:
            if d.index < 0:
                if include_usage and d.usage is not None:
                    payload = {
                        "id": id_,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": _usage(d.usage),
                    }
                    yield _sse(payload)
                continue
            has_output = d.text or d.logprobs or d.tool_calls or d.finish_reason is not None
            if d.index not in started and has_output:
                # The role opens the choice once its first output is known: a choice that begins with a
                # tool call has content null, as OpenAI streams it (the SDK's final message then agrees
                # with the non-streamed one); one that begins with text has "".
                started.add(d.index)
                content = None if d.tool_calls and not d.text else ""
                first = chunk(d.index, {"role": "assistant", "content": content})
                if citations and len(started) == 1:
                    extra = b',"citations":' + stream_json(citations) + b"}\n\n"
                    first = first[: -len(b"}\n\n")] + extra
                yield first
            if d.text or d.logprobs:
                yield chunk(
                    d.index, {"content": d.text}, None, chat_logprobs(d.logprobs) if d.logprobs else None
                )
            if d.tool_calls and functions:
                for c in d.tool_calls:
                    if c.index == 0:
                        fn = {"arguments": c.arguments} | ({"name": c.name} if c.name is not None else {})
                        yield chunk(d.index, {"function_call": fn})
            elif d.tool_calls:
                calls = []
                for c in d.tool_calls:
                    call: dict[str, Any] = {"index": c.index}
                    if c.id is not None:
                        call["id"] = c.id
                        call["type"] = "function"
                    function: dict[str, Any] = {"arguments": c.arguments}
                    if c.name is not None:
                        function["name"] = c.name
                    call["function"] = function
                    calls.append(call)
                yield chunk(d.index, {"tool_calls": calls})
            if d.finish_reason is not None:
                finish = d.finish_reason
                yield chunk(d.index, {}, "function_call" if functions and finish == "tool_calls" else finish)
    except Exception as exc:
        yield _error_event(exc)
    finally:
        await _aclose(deltas)
    yield _DONE


async def sse_completion(
    deltas: AsyncIterator[Delta], id_: str, model: str, created: int, include_usage: bool, logprobs: bool
) -> AsyncIterator[bytes]:
    """``text_completion`` chunks, ``[DONE]`` last."""
    base = {
        "id": id_,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }
    offsets: dict[int, int] = {}
    try:
        async for d in deltas:
            if d.index < 0:
                if include_usage and d.usage is not None:
                    yield _sse({**base, "choices": [], "usage": _usage(d.usage)})
                continue
            if not (d.text or d.logprobs or d.finish_reason):
                continue
            offset = offsets.get(d.index, 0)
            lp = completion_logprobs(d.logprobs, offset) if logprobs else None
            offsets[d.index] = offset + len(d.text)
            choice = {"text": d.text, "index": d.index, "logprobs": lp, "finish_reason": d.finish_reason}
            payload: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                payload["usage"] = None
            yield _sse(payload)
    except Exception as exc:
        yield _error_event(exc)
    finally:
        await _aclose(deltas)
    yield _DONE


async def _aclose(deltas: AsyncIterator[Delta]) -> None:
    aclose = getattr(deltas, "aclose", None)
    if aclose is not None:
        await aclose()  # the client went away, or we are done: free the slot
