"""Anthropic's Messages wire format <-> core types: requests in, ``message`` objects out (their SSE events
are :mod:`llmhost.doors.anthropic.stream`'s, built from the pieces here), and Anthropic's error
envelope. With ``stream``, the only place that builds Anthropic answers.

Requests: ``system`` (a string or text blocks) becomes a system message; in a user turn, text and image
blocks become a user message and each ``tool_result`` a ``tool`` message (``tool_call_id`` = its
``tool_use_id``, the content its text, after ``Error: `` when ``is_error`` is set, as chat templates have
no other place for it); an assistant turn's ``tool_use`` blocks become its tool calls (``arguments`` =
the JSON text of ``input``). Text blocks of one turn are joined with a blank line; documents and search
results are read as text under their title (and a search result's source).
Thinking blocks are dropped, as is the ``x-anthropic-billing-header`` Claude Code puts in front of its
system prompt (billing metadata for Anthropic, whose per-request stamp would defeat prefix caching).
``tool_choice`` ``auto`` / ``any`` / ``tool`` / ``none`` becomes ``auto`` / ``required`` / a named
tool / ``none``, and ``disable_parallel_tool_use`` ``parallel_tool_calls=False``. System turns inside
``messages`` join the system prompt when they lead, else the nearest user turn (most chat templates
take a system message only at the start). A conversation that ends with an assistant turn (prefill) is
refused: the answer could not continue that text. A tool_result must answer an earlier tool_use.

Answers: ``stop_reason`` is ``tool_use`` for tool calls, ``max_tokens`` at the token limit (or
``model_context_window_exceeded`` when ``max_tokens`` was cut to the context window's room),
``stop_sequence`` (with the string) when one of ``stop_sequences`` ended it, else ``end_turn``. Ids are
``msg_...`` and ``toolu_...``. ``usage.input_tokens`` counts the prompt tokens that were not read from
the prefix cache; ``cache_read_input_tokens`` those that were. ``max_tokens: 0`` (fill the prompt
cache, answer nothing) is a message with no content that stopped at ``max_tokens``.

Errors: Anthropic's envelope with the ``request_id``, and the status Anthropic's reference gives each
type; an overloaded engine (a full queue, a model still loading) is ``529 overloaded_error``, as
``429`` means ``rate_limit_error`` there. Every answer carries the ``request-id`` header.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from fastapi.responses import JSONResponse

from llmhost.core.types import (
    ChatMessage,
    ContentPart,
    FinishReason,
    InferenceRequest,
    ResponseFormat,
    Result,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from llmhost.doors.anthropic import protocol as wire
from llmhost.errors import ErrorInfo, RequestError
from llmhost.logs import current_request_id

__all__ = [
    "cached_prompt_body",
    "count_request",
    "error_body",
    "error_type",
    "message_body",
    "message_id",
    "messages_request",
    "render_error",
    "request_id_header",
    "stop_reason",
    "tool_use_id",
    "usage_body",
]

log = logging.getLogger(__name__)

_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "conflict": "conflict_error",
    "too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "overloaded": "overloaded_error",
    "timeout": "timeout_error",
    "upstream": "api_error",
    "server": "api_error",
}
_OVERLOADED = 529  # Anthropic's status for overloaded_error
_BILLING_HEADER = re.compile(r"x-anthropic-billing-header:\s*(?:[\w.-]+=[^;\n]*;\s*)*")
_JOIN = "\n\n"


# ----- errors ------------------------------------------------------------------------------------------
def error_type(info: ErrorInfo) -> str:
    """Anthropic's name for an error: ``invalid_request_error``, ``not_found_error``, ``api_error``..."""
    return _ERROR_TYPES.get(info.kind, "api_error" if info.status >= 500 else "invalid_request_error")


def error_body(info: ErrorInfo, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type(info), "message": _message(info)}}
    if request_id:
        body["request_id"] = request_id
    return body


def _message(info: ErrorInfo) -> str:
    """The message in Anthropic's words where its clients read them: a prompt longer than the context is
    "prompt is too long: N tokens > M maximum" (Claude Code compacts the conversation on it)."""
    if info.code == "context_length_exceeded" and "prompt_tokens" in info.facts:
        prompt, most = info.facts["prompt_tokens"], info.facts["allowed"] - 1  # one token left to answer
        if prompt > most:
            return f"prompt is too long: {prompt} tokens > {most} maximum"
    return info.message


def threads_unsupported() -> JSONResponse:
    """The 400 for a ``thread`` (the Threads beta: the server keeps the conversation) in the error
    Anthropic's SDK recovers from: its tool runner and threads then send the whole conversation again."""
    info = ErrorInfo(
        400,
        "invalid_request",
        "thread: this server keeps no conversations; send the whole conversation without `thread`",
        "thread",
    )
    body = error_body(info, current_request_id())
    body["error"]["details"] = {"error_code": "thread_unsupported_request"}
    return JSONResponse(body, status_code=400, headers=request_id_header() or None)


def request_id_header() -> dict[str, str]:
    """``request-id`` (the SDK's ``_request_id``) for the request being served, when there is one."""
    request_id = current_request_id()
    return {"request-id": request_id} if request_id else {}


def render_error(info: ErrorInfo) -> JSONResponse:
    """Anthropic's envelope, ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    status = _OVERLOADED if info.kind == "overloaded" else info.status
    headers = {**info.headers, **request_id_header()}
    return JSONResponse(error_body(info, current_request_id()), status_code=status, headers=headers or None)


# ----- ids ---------------------------------------------------------------------------------------------
def message_id() -> str:
    return f"msg_{os.urandom(12).hex()}"


def tool_use_id(call_id: str) -> str:
    """A call's id as Anthropic clients expect it (``toolu_...``); it comes back as is in the history,
    where any id string works."""
    if call_id.startswith("toolu_"):
        return call_id
    return f"toolu_{call_id or os.urandom(12).hex()}"


# ----- requests ----------------------------------------------------------------------------------------
def _system_text(text: str) -> str:
    match = _BILLING_HEADER.match(text)
    return text[match.end() :] if match else text


def _image(block: wire.ImageBlock, where: str) -> ContentPart:
    source = block.source
    if isinstance(source, wire.Base64Source):
        try:
            raw = base64.b64decode(source.data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: image data is not valid base64", param=where) from None
        return ContentPart("image", media_type=source.media_type, data=raw)
    if isinstance(source, wire.URLSource):
        return ContentPart("image", url=source.url)
    raise RequestError(f"{where}: file sources are not supported; send the image as base64", param=where)


def _document_text(block: wire.DocumentBlock, where: str) -> tuple[str, list[ContentPart]]:
    source = block.source
    parts: list[ContentPart] = []
    if isinstance(source, wire.PlainTextSource):
        text = source.data
    elif isinstance(source, wire.ContentSource):
        texts = []
        for j, inner in enumerate(source.content):
            if isinstance(inner, wire.TextBlock):
                texts.append(inner.text)
            else:
                parts.append(_image(inner, f"{where}.source.content.{j}"))
        text = _JOIN.join(texts)
    else:
        raise RequestError(
            f"{where}: only plain-text documents are supported, not '{source.type}' sources (PDFs)",
            param=where,
        )
    return _headed(text, block.title, block.context), parts


def _search_result_text(block: wire.SearchResultBlock) -> str:
    return _headed(_JOIN.join(b.text for b in block.content), block.title, block.source)


def _headed(text: str, *heading: str | None) -> str:
    head = "\n".join(x for x in heading if x)
    return f"{head}\n\n{text}" if head else text


def _tool_result(block: wire.ToolResultBlock, where: str, names: dict[str, str]) -> ChatMessage:
    if block.tool_use_id not in names:
        raise RequestError(
            f"{where}: tool_result refers to tool_use_id {block.tool_use_id!r}, which no earlier "
            "assistant turn's tool_use block has",
            param=where,
        )
    texts: list[str] = []
    parts: list[ContentPart] = []
    for j, item in enumerate(block.content):
        if isinstance(item, wire.TextBlock):
            texts.append(item.text)
        elif isinstance(item, wire.ImageBlock):
            parts.append(_image(item, f"{where}.content.{j}"))
        elif isinstance(item, wire.SearchResultBlock):
            texts.append(_search_result_text(item))
        else:
            text, more = _document_text(item, f"{where}.content.{j}")
            texts.append(text)
            parts.extend(more)
    text = _JOIN.join(texts)
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return ChatMessage(
        "tool",
        text,
        tuple(parts),
        tool_call_id=block.tool_use_id,
        name=names[block.tool_use_id],
    )


def _user_turn(m: wire.Message, i: int, names: dict[str, str]) -> Iterator[ChatMessage]:
    texts: list[str] = []
    parts: list[ContentPart] = []

    def pending() -> Iterator[ChatMessage]:
        if texts or parts:
            yield ChatMessage("user", _JOIN.join(texts), tuple(parts))
            texts.clear()
            parts.clear()

    for j, block in enumerate(m.content):
        where = f"messages.{i}.content.{j}"
        if isinstance(block, wire.TextBlock):
            texts.append(block.text)
        elif isinstance(block, wire.ImageBlock):
            parts.append(_image(block, where))
        elif isinstance(block, wire.DocumentBlock):
            text, more = _document_text(block, where)
            texts.append(text)
            parts.extend(more)
        elif isinstance(block, wire.SearchResultBlock):
            texts.append(_search_result_text(block))
        elif isinstance(block, wire.ToolResultBlock):
            yield from pending()
            yield _tool_result(block, where, names)
        elif isinstance(block, wire.ToolUseBlock):
            raise RequestError(f"{where}: tool_use blocks belong in assistant turns", param=where)
        # thinking blocks: nothing for the prompt
    if not m.content:
        yield ChatMessage("user", "")
    yield from pending()


def _assistant_turn(m: wire.Message, i: int, names: dict[str, str]) -> Iterator[ChatMessage]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(m.content):
        where = f"messages.{i}.content.{j}"
        if isinstance(block, wire.TextBlock):
            texts.append(block.text)
        elif isinstance(block, wire.ToolUseBlock):
            calls.append(ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False)))
            names[block.id] = block.name
        elif isinstance(block, wire.ThinkingBlock | wire.RedactedThinkingBlock):
            continue
        else:
            raise RequestError(f"{where}: '{block.type}' blocks belong in user turns", param=where)
    if texts or calls:
        yield ChatMessage("assistant", _JOIN.join(texts), tool_calls=tuple(calls))


def _system_turn(m: wire.Message, i: int) -> Iterator[ChatMessage]:
    texts: list[str] = []
    for j, block in enumerate(m.content):
        if not isinstance(block, wire.TextBlock):
            where = f"messages.{i}.content.{j}"
            raise RequestError(f"{where}: system turns hold text blocks only", param=where)
        texts.append(_system_text(block.text))
    yield ChatMessage("system", _joined(*texts))


def _joined(*texts: str) -> str:
    return _JOIN.join(t for t in texts if t)


def _fold_system_turns(messages: list[ChatMessage]) -> list[ChatMessage]:
    """One leading system message; a system turn after the conversation began (Claude Code sends one
    at the end, its mid-conversation system beta) joins the user turn before it, else the next one,
    because most chat templates take a system message only at the start."""
    out: list[ChatMessage] = []
    held: list[str] = []  # late system text waiting for a user turn
    for m in messages:
        if m.role == "system":
            if not out or (len(out) == 1 and out[0].role == "system"):
                out[:] = [ChatMessage("system", _joined(*(x.content for x in out), m.content))]
            elif out[-1].role == "user":
                out[-1] = replace(out[-1], content=_joined(out[-1].content, m.content))
            else:
                held.append(m.content)
            continue
        if m.role == "user" and held:
            m = replace(m, content=_joined(*held, m.content))
            held.clear()
        out.append(m)
    if held:
        out.append(ChatMessage("user", _joined(*held)))
    return out


def _messages(body: wire.CountTokensRequest) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    system = _joined(*(_system_text(b.text) for b in body.system or ()))
    if system:
        out.append(ChatMessage("system", system))
    names: dict[str, str] = {}  # tool_use id -> tool name, for the tool messages that answer them
    for i, m in enumerate(body.messages):
        if m.role == "user":
            out.extend(_user_turn(m, i, names))
        elif m.role == "assistant":
            out.extend(_assistant_turn(m, i, names))
        else:
            out.extend(_system_turn(m, i))
    out = _fold_system_turns(out)
    if out and out[-1].role == "assistant":
        raise RequestError(
            "the conversation must end with a user turn: continuing an assistant turn (prefill) is "
            "not supported",
            param="messages",
        )
    return tuple(out)


def _tools(body: wire.CountTokensRequest) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    for i, t in enumerate(body.tools or ()):
        if t.type not in (None, "custom"):
            raise RequestError(
                f"tools.{i}: server tool '{t.type}' is not supported here; only client tools "
                "(name, description, input_schema) are",
                param=f"tools.{i}.type",
            )
        if t.input_schema is None:
            raise RequestError(f"tools.{i}: input_schema is required", param=f"tools.{i}.input_schema")
        tools.append(Tool(t.name, t.description, t.input_schema))
    return tuple(tools)


def _tool_choice(choice: wire.ToolChoice | None, has_tools: bool) -> tuple[ToolChoice, bool]:
    """The core tool choice and ``parallel_tool_calls``."""
    if choice is None:
        return ToolChoice("auto"), True
    if isinstance(choice, wire.ToolChoiceNone):
        return ToolChoice("none"), True
    if not has_tools and not isinstance(choice, wire.ToolChoiceAuto):
        raise RequestError(f"tool_choice '{choice.type}' needs at least one tool in 'tools'", "tool_choice")
    parallel = not choice.disable_parallel_tool_use
    if isinstance(choice, wire.ToolChoiceAny):
        return ToolChoice("required"), parallel
    if isinstance(choice, wire.ToolChoiceTool):
        return ToolChoice("tool", choice.name), parallel
    return ToolChoice("auto"), parallel


def _response_format(config: wire.OutputConfig | None) -> ResponseFormat:
    if config is None or config.format is None:
        return ResponseFormat()
    return ResponseFormat("json_schema", config.format.schema_, "output")


def _request(body: wire.CountTokensRequest, sampling: Sampling, user: str | None) -> InferenceRequest:
    tools = _tools(body)
    choice, parallel = _tool_choice(body.tool_choice, bool(tools))
    return InferenceRequest(
        "chat",
        body.model,
        messages=_messages(body),
        sampling=sampling,
        response_format=_response_format(body.output_config),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        user=user,
    )


def messages_request(body: wire.MessagesRequest) -> InferenceRequest:
    """The core request for a ``POST /v1/messages`` body."""
    if body.max_tokens == 0 and body.stream:
        raise RequestError("max_tokens: 0 (fill the prompt cache, no answer) cannot be streamed", "stream")
    sampling = Sampling(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=tuple(body.stop_sequences or ()),
        speculative=body.speculative,
    )
    return _request(body, sampling, body.metadata.user_id if body.metadata else None)


def count_request(body: wire.CountTokensRequest) -> InferenceRequest:
    """The core request whose input tokens ``/v1/messages/count_tokens`` counts."""
    return _request(body, Sampling(), None)


# ----- answers -----------------------------------------------------------------------------------------
def stop_reason(finish: FinishReason | None, stop_sequence: str | None, *, context_full: bool = False) -> str:
    """Anthropic's ``stop_reason``; ``context_full``: ``max_tokens`` was cut to the room the context
    window left, so reaching it is ``model_context_window_exceeded``."""
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "model_context_window_exceeded" if context_full else "max_tokens"
    if finish == "stop" and stop_sequence:
        return "stop_sequence"
    return "end_turn"


def usage_body(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage; its input total is ``input_tokens`` plus the two cache counts."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    return {
        "input_tokens": usage.prompt_tokens - cached,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    }


def cached_prompt_body(result: Result, id_: str) -> dict[str, Any]:
    """The answer to ``max_tokens: 0``: the prompt was read (and cached), nothing was said. ``result``
    is the run that read it; what it generated is not part of the answer."""
    return {
        "id": id_,
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": [],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": usage_body(replace(result.usage, completion_tokens=0)),
    }


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    # Only a call cut off by max_tokens gets here: Anthropic's input is always an object.
    log.warning("tool call arguments are not a JSON object (%d chars); sending {}", len(arguments))
    return {}


def _tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": tool_use_id(call.id),
        "name": call.name,
        "input": _tool_input(call.arguments),
    }


def message_body(result: Result, id_: str, *, context_full: bool = False) -> dict[str, Any]:
    """A whole answer as Anthropic's ``message`` object: its text block, then its tool_use blocks."""
    choice = result.choices[0]
    content: list[dict[str, Any]] = []
    if choice.text or not choice.tool_calls:
        content.append({"type": "text", "text": choice.text})
    content.extend(_tool_use_block(call) for call in choice.tool_calls)
    reason = stop_reason(choice.finish_reason, choice.stop_sequence, context_full=context_full)
    return {
        "id": id_,
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": choice.stop_sequence if reason == "stop_sequence" else None,
        "usage": usage_body(result.usage),
    }
