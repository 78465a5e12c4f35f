"""Ollama's wire format <-> llmhost's core types, the NDJSON stream encoder, and Ollama's error envelope.

Requests: ``options`` become :class:`Sampling` (``num_predict`` -> ``max_tokens``, ``temperature``,
``top_k``, ``top_p``, ``min_p``, ``seed``, ``stop``, ``repeat_penalty``, ``presence_penalty``,
``frequency_penalty``; ``num_predict`` <= 0 and ``seed`` < 0 mean unset, as in Ollama; llmhost's own
``speculative``, ``"ngram"`` or ``"none"``; options that set up the runner (``num_ctx``, ``num_gpu``,
...) and unknown ones are ignored). ``format`` ``"json"`` or a JSON schema becomes a
:class:`ResponseFormat`; ``images`` (base64) become image parts; ``role: tool`` messages answer the
assistant's calls by ``tool_call_id``, else by ``tool_name``, else in order (ids are generated where a
client sent none, so the core types always pair calls and answers).

Answers: ``done_reason`` is ``length`` when the token limit ended the answer, else ``stop`` (tool calls
too, as Ollama reports them). Counts come from the usage; durations (nanoseconds) are measured here, at
the door, by a :class:`Clock`: ``load_duration`` while the model was loaded for this request,
``prompt_eval_duration`` until the first output, ``eval_duration`` after it. A stream is NDJSON: one
object per text fragment, each tool call whole once its arguments are complete (the client parses them
as an object), then one ``done: true`` object with the reason, counts and durations; a failure
mid-stream is one ``{"error": ...}`` line.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import secrets
import string
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, cast

from fastapi.responses import JSONResponse

from llmhost.core.stream import ResultBuilder
from llmhost.core.types import (
    ChatMessage,
    ContentPart,
    Delta,
    FinishReason,
    InferenceRequest,
    ResponseFormat,
    Result,
    Sampling,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llmhost.doors.common import stream_json, token_logprobs
from llmhost.doors.ollama import protocol as wire
from llmhost.doors.ollama.gotime import rfc3339
from llmhost.doors.ollama.template import render_go_template
from llmhost.errors import ErrorInfo, LLMHostError, RequestError, classify

__all__ = [
    "Clock",
    "ToolCallCollector",
    "chat_request",
    "chat_response",
    "collect",
    "done_reason",
    "embed_inputs",
    "error_line",
    "fit_dimensions",
    "generate_request",
    "generate_response",
    "logprobs_wire",
    "ndjson_chat",
    "ndjson_generate",
    "new_tool_call_id",
    "pull_spec",
    "refuse_thinking",
    "render_error",
    "require_model",
    "response_format",
    "sampling",
    "tool_call_wire",
]

log = logging.getLogger(__name__)

_ROLES = ("system", "user", "assistant", "tool")
_INT_OPTIONS = ("num_predict", "top_k", "seed")
_FLOAT_OPTIONS = ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")
_ID_ALPHABET = string.ascii_lowercase + string.digits


# ----- errors ----------------------------------------------------------------------------------------
def render_error(info: ErrorInfo) -> JSONResponse:
    """Ollama's envelope: ``{"error": "<message>"}`` with the status."""
    return JSONResponse({"error": info.message}, status_code=info.status, headers=info.headers or None)


def error_line(exc: BaseException) -> bytes:
    """A failure after the stream started, as the one ``{"error": ...}`` line Ollama's clients raise."""
    if not isinstance(exc, LLMHostError):
        log.warning("stream ended with an unexpected error", exc_info=exc)
    info = classify(exc)
    log.warning("stream ended with an error: %s", info.message)
    return _line({"error": info.message})


def _line(payload: dict[str, Any]) -> bytes:
    return stream_json(payload) + b"\n"


# ----- small values ----------------------------------------------------------------------------------
def new_tool_call_id() -> str:
    """An id in Ollama's shape, ``call_`` and 8 lower-case letters or digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def require_model(model: str) -> str:
    if not model:
        raise RequestError("model is required", param="model")
    return model


# ----- requests --------------------------------------------------------------------------------------
def _option_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f'option "{key}" must be of type integer', param=f"options.{key}")
    return int(value)


def _option_float(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f'option "{key}" must be of type float32', param=f"options.{key}")
    return float(value)


def sampling(
    options: dict[str, Any] | None, logprobs: bool | None = None, top_logprobs: int | None = None
) -> Sampling:
    """``options`` (and ``logprobs`` / ``top_logprobs``) as :class:`Sampling`; unset stays unset."""
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    ints = {k: _option_int(k, opts[k]) for k in _INT_OPTIONS if k in opts}
    floats = {k: _option_float(k, opts[k]) for k in _FLOAT_OPTIONS if k in opts}
    stop: tuple[str, ...] = ()
    if "stop" in opts:
        raw = opts["stop"]
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise RequestError('option "stop" must be of an array of strings', param="options.stop")
        stop = tuple(s for s in items if s)
    if top_logprobs is not None and not 0 <= top_logprobs <= 20:
        raise RequestError("top_logprobs must be between 0 and 20", param="top_logprobs")
    speculative = opts.get("speculative")
    if speculative not in (None, "ngram", "none"):
        raise RequestError('option "speculative" must be "ngram" or "none"', param="options.speculative")
    num_predict = ints.get("num_predict")
    seed = ints.get("seed")
    top_k = ints.get("top_k")
    return Sampling(
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        temperature=floats.get("temperature"),
        top_p=floats.get("top_p"),
        top_k=top_k if top_k is not None and top_k >= 0 else None,
        min_p=floats.get("min_p"),
        repeat_penalty=floats.get("repeat_penalty"),
        seed=seed if seed is not None and seed >= 0 else None,
        presence_penalty=floats.get("presence_penalty", 0.0),
        frequency_penalty=floats.get("frequency_penalty", 0.0),
        stop=stop,
        logprobs=(top_logprobs or 0) if logprobs else None,
        speculative=speculative,
    )


def response_format(fmt: str | dict[str, Any] | None) -> ResponseFormat:
    """``format``: empty for text, ``"json"`` for any JSON, or a JSON schema the answer must follow."""
    if fmt is None or fmt == "":
        return ResponseFormat()
    if fmt == "json":
        return ResponseFormat("json")
    if isinstance(fmt, dict):
        return ResponseFormat("json_schema", schema=fmt)
    raise RequestError(f'invalid format {fmt!r}: use "json" or a JSON schema object', param="format")


def _media_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _images(images: Sequence[str] | None, where: str) -> tuple[ContentPart, ...]:
    parts = []
    for j, text in enumerate(images or ()):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}.images[{j}] is not valid base64", param=f"{where}.images") from None
        parts.append(ContentPart("image", media_type=_media_type(data), data=data))
    return tuple(parts)


def _arguments_text(arguments: dict[str, Any] | str, where: str) -> str:
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise RequestError(f"{where}.function.arguments must be a JSON object", param=f"{where}.function")
    return json.dumps(parsed, ensure_ascii=False)


def _messages(messages: Sequence[wire.Message]) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    pending: list[ToolCall] = []  # the last assistant turn's calls not answered yet
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role not in _ROLES:
            raise RequestError(
                f"{where}.role {m.role!r} is not one of {', '.join(_ROLES)}", param=f"{where}.role"
            )
        parts = _images(m.images, where)
        content = m.content or ""
        if m.role == "assistant":
            calls = tuple(
                ToolCall(
                    c.id or new_tool_call_id(),
                    c.function.name,
                    _arguments_text(c.function.arguments, f"{where}.tool_calls[{j}]"),
                )
                for j, c in enumerate(m.tool_calls or ())
            )
            pending = list(calls)
            out.append(ChatMessage("assistant", content, parts, tool_calls=calls))
        elif m.role == "tool":
            answered = _answered_call(pending, m.tool_call_id, m.tool_name)
            call_id = m.tool_call_id or (answered.id if answered else new_tool_call_id())
            name = m.tool_name or (answered.name if answered else None)
            out.append(ChatMessage("tool", content, parts, tool_call_id=call_id, name=name))
        else:
            out.append(ChatMessage(cast(Literal["system", "user"], m.role), content, parts))
    return tuple(out)


def _answered_call(pending: list[ToolCall], call_id: str | None, name: str | None) -> ToolCall | None:
    """The pending call a tool message answers (removed from ``pending``): by id, else by name, else
    the first one."""
    if call_id:
        match = next((c for c in pending if c.id == call_id), None)
    elif name:
        match = next((c for c in pending if c.name == name), None)
    else:
        match = pending[0] if pending else None
    if match is not None:
        pending.remove(match)
    return match


def _tools(tools: Sequence[wire.ToolDef] | None) -> tuple[Tool, ...]:
    out = []
    for i, t in enumerate(tools or ()):
        if t.type != "function":
            raise RequestError(f"tools[{i}].type {t.type!r} is not supported; use 'function'", f"tools[{i}]")
        fn = t.function
        params = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
        out.append(Tool(fn.name, fn.description or "", params))
    return tuple(out)


def chat_request(body: wire.ChatRequest) -> InferenceRequest:
    """An ``/api/chat`` body (with at least one message) as a chat request."""
    return InferenceRequest(
        "chat",
        require_model(body.model),
        messages=_messages(body.messages or ()),
        sampling=sampling(body.options, body.logprobs, body.top_logprobs),
        response_format=response_format(body.format),
        tools=_tools(body.tools),
    )


def generate_request(body: wire.GenerateRequest) -> InferenceRequest:
    """A non-empty ``/api/generate`` body as a request: ``raw`` or a ``template`` is a completion of the
    prompt text as given (or as the template renders it); otherwise a chat of ``system`` and the prompt
    through the model's chat template."""
    model = require_model(body.model)
    prompt = body.prompt or ""
    system = body.system or ""
    if body.suffix:
        raise RequestError(f"{model!r} does not support insert", param="suffix")
    if body.raw and (body.template or system or body.context):
        raise RequestError("raw mode does not support template, system, or context", param="raw")
    parts = _images(body.images, "request")
    # ``context``: the token ids of earlier turns, continued; every answer but a raw one sends its own.
    common: dict[str, Any] = {
        "sampling": sampling(body.options, body.logprobs, body.top_logprobs),
        "response_format": response_format(body.format),
        "prefix_tokens": tuple(body.context or ()),
        "want_tokens": not body.raw,
    }
    if body.raw or body.template:
        if parts:
            raise RequestError("images need the model's chat template: leave out raw and template", "images")
        text = prompt if body.raw else render_go_template(body.template or "", system=system, prompt=prompt)
        return InferenceRequest("completion", model, prompt=text, **common)
    messages: tuple[ChatMessage, ...] = (ChatMessage("system", system),) if system else ()
    messages += (ChatMessage("user", prompt, parts),)
    return InferenceRequest("chat", model, messages=messages, **common)


def refuse_thinking(model: str, think: wire.Think) -> None:
    """A 400 for ``think`` on, in Ollama's words: no model here gives its thinking apart from its answer
    (``/api/show`` lists no ``thinking``), so a client that asks for it would silently get none."""
    if think is True or (isinstance(think, str) and think):
        raise RequestError(f"{json.dumps(model)} does not support thinking", param="think")


def pull_spec(body: wire.PullRequest) -> str:
    """What ``/api/pull`` fetches: ``model``, or ``name``, Ollama's older spelling that its Go CLI sends.

    Both, differing, are a 400: an older llmhost client meant ``name`` as the name to register under,
    and Ollama would silently drop it; that is ``register_as`` now.
    """
    if body.model and body.name and body.model != body.name:
        raise RequestError(
            "name is Ollama's older spelling of model; to register the model under a name of your "
            "choice, send it as register_as",
            param="name",
        )
    return require_model(body.model or body.name)


def embed_inputs(value: Any) -> list[str]:
    """``/api/embed``'s ``input``: a string or a list of strings (empty: nothing to embed)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise RequestError("invalid input type", param="input")


def fit_dimensions(vectors: list[list[float]], dimensions: int | None) -> list[list[float]]:
    """Vectors cut to ``dimensions`` and normalised again, as Ollama does (only ever shorter)."""
    if dimensions is None or dimensions == 0:
        return vectors
    if dimensions < 0:
        raise RequestError("dimensions must be a positive number", param="dimensions")
    out = []
    for v in vectors:
        if dimensions < len(v):
            cut = v[:dimensions]
            norm = math.sqrt(sum(x * x for x in cut)) or 1.0
            v = [x / norm for x in cut]
        out.append(v)
    return out


# ----- answers ---------------------------------------------------------------------------------------
class Clock:
    """Ollama's durations for one request, in nanoseconds, measured at the door."""

    def __init__(self) -> None:
        self.started_ns = time.perf_counter_ns()
        self.wall_started = time.time()
        self.first_ns: int | None = None
        self.load_ns = 0

    def first_output(self) -> None:
        if self.first_ns is None:
            self.first_ns = time.perf_counter_ns()

    def elapsed_ns(self) -> int:
        return time.perf_counter_ns() - self.started_ns

    def metrics(self, usage: Usage) -> dict[str, int]:
        """``total_duration`` ... ``eval_duration``, leaving out zeros as Ollama does."""
        now = time.perf_counter_ns()
        first = self.first_ns if self.first_ns is not None else now
        values = {
            "total_duration": now - self.started_ns,
            "load_duration": self.load_ns,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": max(0, first - self.started_ns - self.load_ns),
            "eval_count": usage.completion_tokens,
            "eval_duration": max(0, now - first),
        }
        return {k: v for k, v in values.items() if v}


def done_reason(finish: FinishReason | None) -> str:
    return "length" if finish == "length" else "stop"


def logprobs_wire(items: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """``[{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]``."""
    return token_logprobs(items)


def _arguments_object(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text) if text.strip() else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        # The client's type is an object: a model that wrote broken arguments gets an empty one.
        log.warning("a tool call's arguments are not a JSON object; sending {}")
        return {}
    return parsed


def tool_call_wire(call: ToolCall, index: int) -> dict[str, Any]:
    """One call as Ollama writes it: ``{id, function: {index, name, arguments: {...}}}``."""
    return {
        "id": call.id or new_tool_call_id(),
        "function": {"index": index, "name": call.name, "arguments": _arguments_object(call.arguments)},
    }


def _message(text: str, calls: Sequence[ToolCall] = (), first_index: int = 0) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [tool_call_wire(c, first_index + i) for i, c in enumerate(calls)]
    return message


def _head(model: str) -> dict[str, Any]:
    return {"model": model, "created_at": rfc3339()}


def chat_response(result: Result, model: str, clock: Clock) -> dict[str, Any]:
    """A whole ``/api/chat`` answer."""
    choice = result.choices[0]
    body = {**_head(model), "message": _message(choice.text, choice.tool_calls)}
    if choice.logprobs is not None:
        body["logprobs"] = logprobs_wire(choice.logprobs)
    return {
        **body,
        "done": True,
        "done_reason": done_reason(choice.finish_reason),
        **clock.metrics(result.usage),
    }


def generate_response(result: Result, model: str, clock: Clock) -> dict[str, Any]:
    """A whole ``/api/generate`` answer."""
    choice = result.choices[0]
    body = {**_head(model), "response": choice.text}
    if choice.logprobs is not None:
        body["logprobs"] = logprobs_wire(choice.logprobs)
    return {**body, **_generate_done(choice.finish_reason, choice.tokens), **clock.metrics(result.usage)}


def _generate_done(finish: FinishReason | None, tokens: Sequence[int] | None) -> dict[str, Any]:
    done = {"done": True, "done_reason": done_reason(finish)}
    return {**done, "context": list(tokens)} if tokens else done


async def collect(deltas: AsyncIterator[Delta], model: str, *, logprobs: bool = False) -> Result:
    """A stream's deltas as the whole answer they amount to."""
    built = ResultBuilder("ollama", model, logprobs=logprobs)
    try:
        async for delta in deltas:
            built.add(delta)
    finally:
        await _aclose(deltas)
    return built.result()


class ToolCallCollector:
    """Streamed tool-call fragments -> whole calls: Ollama's clients parse each call's arguments as an
    object, so a call goes out once the next one starts or the choice finishes."""

    def __init__(self) -> None:
        self._open: dict[int, list[str]] = {}  # call index -> [id, name, argument fragments...]
        self.sent = 0

    def add(self, fragments: Sequence[ToolCallDelta]) -> list[ToolCall]:
        """Take fragments; return the calls they completed (every call before a newly started one)."""
        done: list[ToolCall] = []
        for f in fragments:
            parts = self._open.get(f.index)
            if parts is None:
                done += self._pop(below=f.index)
                parts = self._open[f.index] = [f.id or "", f.name or ""]
            else:
                parts[0] = parts[0] or f.id or ""
                parts[1] = parts[1] or f.name or ""
            parts.append(f.arguments)
        return done

    def flush(self) -> list[ToolCall]:
        """Every call still open (the choice finished)."""
        return self._pop(below=None)

    def _pop(self, below: int | None) -> list[ToolCall]:
        ready = sorted(i for i in self._open if below is None or i < below)
        calls = []
        for i in ready:
            parts = self._open.pop(i)
            calls.append(ToolCall(parts[0] or new_tool_call_id(), parts[1], "".join(parts[2:])))
        return calls


async def ndjson_chat(deltas: AsyncIterator[Delta], model: str, clock: Clock) -> AsyncIterator[bytes]:
    """``/api/chat``'s NDJSON: message fragments, whole tool calls, then the ``done`` object."""
    collector = ToolCallCollector()
    finish: FinishReason | None = None
    usage = Usage()

    def calls_line(calls: list[ToolCall]) -> bytes:
        line = _line({**_head(model), "message": _message("", calls, collector.sent), "done": False})
        collector.sent += len(calls)
        return line

    try:
        async for d in deltas:
            if d.usage is not None:
                usage = d.usage
            if d.index != 0:
                continue
            if d.text or d.logprobs:
                chunk: dict[str, Any] = {**_head(model), "message": _message(d.text)}
                if d.logprobs:
                    chunk["logprobs"] = logprobs_wire(d.logprobs)
                yield _line({**chunk, "done": False})
            if d.tool_calls and (calls := collector.add(d.tool_calls)):
                yield calls_line(calls)
            if d.finish_reason is not None:
                finish = d.finish_reason
                if calls := collector.flush():
                    yield calls_line(calls)
    except Exception as exc:
        yield error_line(exc)
        return
    finally:
        await _aclose(deltas)
    final = {**_head(model), "message": _message(""), "done": True, "done_reason": done_reason(finish)}
    yield _line({**final, **clock.metrics(usage)})


async def ndjson_generate(deltas: AsyncIterator[Delta], model: str, clock: Clock) -> AsyncIterator[bytes]:
    """``/api/generate``'s NDJSON: ``response`` fragments, then the ``done`` object."""
    finish: FinishReason | None = None
    tokens: tuple[int, ...] | None = None
    usage = Usage()
    try:
        async for d in deltas:
            if d.usage is not None:
                usage = d.usage
            if d.index != 0:
                continue
            if d.text or d.logprobs:
                chunk: dict[str, Any] = {**_head(model), "response": d.text}
                if d.logprobs:
                    chunk["logprobs"] = logprobs_wire(d.logprobs)
                yield _line({**chunk, "done": False})
            if d.finish_reason is not None:
                finish, tokens = d.finish_reason, d.tokens
    except Exception as exc:
        yield error_line(exc)
        return
    finally:
        await _aclose(deltas)
    final = {**_head(model), "response": "", **_generate_done(finish, tokens)}
    yield _line({**final, **clock.metrics(usage)})


async def _aclose(deltas: AsyncIterator[Delta]) -> None:
    aclose = getattr(deltas, "aclose", None)
    if aclose is not None:
        await aclose()  # the client went away, or we are done: free the slot
