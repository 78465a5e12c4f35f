"""The Responses API's wire format <-> core types.

In: a request's ``input`` becomes *items* in the canonical shape ``GET /v1/responses/{id}/input_items``
lists (ids assigned, string content turned into ``input_text`` parts); a conversation of such items,
with the request's ``instructions`` in front, becomes the :class:`InferenceRequest`'s messages.
Out: a :class:`Result` becomes a ``response`` object; the items it holds are built by the same helpers
the streaming events use (:mod:`llmhost.doors.responses.events`). Errors use OpenAI's envelope, as the
OpenAI door draws it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

from fastapi.responses import JSONResponse

from llmhost.core.types import (
    ChatMessage,
    ContentPart,
    FinishReason,
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
from llmhost.doors.common import token_logprobs
from llmhost.doors.openai.translate import render_error as openai_render_error
from llmhost.doors.responses import protocol as wire
from llmhost.errors import ErrorInfo, LLMHostError, RequestError, classify

__all__ = [
    "Item",
    "check_conversation",
    "check_supported",
    "failed",
    "finished",
    "function_call_item",
    "inference_request",
    "input_items",
    "item_id",
    "logprobs_body",
    "message_item",
    "messages",
    "output_items",
    "render_error",
    "response_frame",
    "response_of",
    "response_status",
    "usage_body",
]

log = logging.getLogger(__name__)

Item = dict[str, Any]
"""An input or output item as the API shows it (``message``, ``function_call``, ``function_call_output``)."""

LOGPROBS_INCLUDE = "message.output_text.logprobs"


def item_id(prefix: str) -> str:
    """An OpenAI-style id: ``resp_...``, ``msg_...``, ``fc_...``, ``call_...``."""
    return f"{prefix}_{os.urandom(16).hex()}"


# ----- what we cannot do -----------------------------------------------------------------------------
# The reference's ``include`` values. Only the logprobs one adds anything here; the others name items of
# tools this server has not (file search, web search, images, code interpreter, reasoning), so they add
# nothing, as on OpenAI when a response has no such item.
INCLUDE_VALUES = frozenset(
    {
        "message.output_text.logprobs",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
    }
)


def render_error(info: ErrorInfo) -> JSONResponse:
    """OpenAI's envelope; a context overflow names ``input``, the Responses API's field for the prompt."""
    if info.code == "context_length_exceeded" and info.param == "messages":
        info = dataclasses.replace(info, param="input")
    return openai_render_error(info)


def check_supported(body: wire.ResponseCreateRequest | wire.InputTokensRequest) -> None:
    """Refuse, with a 400 naming the parameter, what this server cannot honour."""
    if isinstance(body, wire.ResponseCreateRequest):
        if body.background:
            raise RequestError("background responses are not supported", param="background")
        if body.prompt is not None:
            raise RequestError("prompt templates are not supported; send input", param="prompt")
    if body.conversation is not None:
        raise RequestError(
            "conversations are not supported; continue with previous_response_id", param="conversation"
        )
    if body.truncation == "auto":
        raise RequestError(
            "truncation 'auto' is not supported: shorten the input, or use truncation 'disabled'",
            param="truncation",
        )
    for i, value in enumerate(getattr(body, "include", None) or ()):
        if value not in INCLUDE_VALUES:
            raise RequestError(
                f"include[{i}]: unknown value '{value}'; one of: {', '.join(sorted(INCLUDE_VALUES))}",
                param=f"include[{i}]",
                code="invalid_value",
            )
    for i, tool in enumerate(body.tools or ()):
        if not isinstance(tool, wire.FunctionTool):
            raise RequestError(
                f"tools[{i}]: tool type '{tool.type}' is not supported; only 'function' tools are",
                param="tools",
            )


# ----- input: wire -> canonical items ----------------------------------------------------------------
def input_items(value: str | list[wire.InputItem] | None) -> list[Item]:
    """The request's ``input`` as canonical items; ``item_reference`` entries stay for the caller to
    resolve against the store. Reasoning items (from other servers) are dropped: nothing here reads them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_message("user", [{"type": "input_text", "text": value}])]
    items: list[Item] = []
    for i, item in enumerate(value):
        if isinstance(item, wire.MessageItem):
            parts = _parts(item.content, item.role, f"input[{i}].content")
            items.append(_message(item.role, parts, item.id))
        elif isinstance(item, wire.FunctionCallItem):
            items.append(
                function_call_item(item.id or item_id("fc"), item.call_id, item.name, item.arguments)
            )
        elif isinstance(item, wire.FunctionCallOutputItem):
            output: str | list[Item] = (
                item.output
                if isinstance(item.output, str)
                else _parts(item.output, "tool", f"input[{i}].output")
            )
            items.append(
                {
                    "id": item.id or item_id("fco"),
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": output,
                    "status": "completed",
                }
            )
        elif isinstance(item, wire.ItemReference):
            items.append({"type": "item_reference", "id": item.id})
        elif item.type != "reasoning":
            raise RequestError(f"input[{i}]: item type '{item.type}' is not supported", param="input")
    return items


def _message(role: str, content: list[Item], id_: str | None = None) -> Item:
    return {
        "id": id_ or item_id("msg"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": content,
    }


def _parts(content: str | list[wire.Part], role: str, where: str) -> list[Item]:
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return [_text_part(text_type, content)]
    parts: list[Item] = []
    for j, part in enumerate(content):
        if isinstance(part, wire.InputText | wire.OutputText):
            parts.append(_text_part(text_type, part.text))
        elif isinstance(part, wire.Refusal) and role == "assistant":
            parts.append({"type": "refusal", "refusal": part.refusal})
        elif isinstance(part, wire.InputImage) and role != "assistant":
            if not part.image_url:
                raise RequestError(
                    f"{where}[{j}]: images by file_id are not supported; send image_url", param="input"
                )
            _image(part.image_url, where)  # refuse a bad data URL now, not on a later turn
            parts.append({"type": "input_image", "image_url": part.image_url, "detail": part.detail})
        else:
            raise RequestError(
                f"{where}[{j}]: content part type '{part.type}' is not supported here", param="input"
            )
    return parts


def _text_part(type_: str, text: str) -> Item:
    if type_ == "output_text":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": "input_text", "text": text}


def _image(url: str, where: str) -> ContentPart:
    if not url.startswith("data:"):
        return ContentPart("image", url=url)
    head, _, data = url.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: image_url data URL is not valid base64", param="input") from None
    return ContentPart("image", media_type=head[5:].split(";")[0], data=raw)


def check_conversation(context: Sequence[Item], new: Sequence[Item]) -> None:
    """OpenAI's checks on a conversation: no item id twice, and every ``function_call_output`` answers
    a ``function_call`` made before it."""
    seen: set[str] = set()
    calls: set[str] = set()
    for item in (*context, *new):
        if item["id"] in seen:
            raise RequestError(
                f"Duplicate item found with id {item['id']}. Remove duplicate items from your input "
                "and try again.",
                param="input",
            )
        seen.add(item["id"])
        if item["type"] == "function_call":
            calls.add(item["call_id"])
        elif item["type"] == "function_call_output" and item["call_id"] not in calls:
            raise RequestError(
                f"No tool call found for function call output with call_id {item['call_id']}.",
                param="input",
            )


# ----- canonical items -> core -----------------------------------------------------------------------
def messages(items: Sequence[Item], instructions: str | None) -> tuple[ChatMessage, ...]:
    """A conversation as chat messages: ``instructions`` first as a system message, consecutive function
    calls (and the assistant text before them) as one assistant message with several tool calls."""
    out: list[ChatMessage] = [ChatMessage("system", instructions)] if instructions else []
    names: dict[str, str] = {}
    for item in items:
        kind = item["type"]
        if kind == "message":
            text, parts = _content(item["content"])
            role: Literal["system", "user", "assistant"] = (
                "system" if item["role"] == "developer" else item["role"]
            )
            out.append(ChatMessage(role, text, parts))
        elif kind == "function_call":
            call = ToolCall(item["call_id"], item["name"], item["arguments"])
            names[call.id] = call.name
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and not last.parts:
                out[-1] = ChatMessage("assistant", last.content, tool_calls=(*last.tool_calls, call))
            else:
                out.append(ChatMessage("assistant", tool_calls=(call,)))
        elif kind == "function_call_output":
            output = item["output"]
            text, parts = (output, ()) if isinstance(output, str) else _content(output)
            out.append(
                ChatMessage(
                    "tool", text, parts, tool_call_id=item["call_id"], name=names.get(item["call_id"])
                )
            )
    return tuple(out)


def _content(parts: Sequence[Item]) -> tuple[str, tuple[ContentPart, ...]]:
    texts: list[str] = []
    images: list[ContentPart] = []
    for part in parts:
        if part["type"] in ("input_text", "output_text"):
            texts.append(part["text"])
        elif part["type"] == "refusal":
            texts.append(part["refusal"])
        elif part["type"] == "input_image":
            images.append(_image(part["image_url"], "input"))
    return "".join(texts), tuple(images)


def _response_format(text: wire.TextConfig | None) -> ResponseFormat:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return ResponseFormat()
    if fmt.type == "json_object":
        return ResponseFormat("json")
    if not isinstance(fmt.schema_, dict):
        raise RequestError("text.format.schema is required for json_schema", param="text.format.schema")
    return ResponseFormat("json_schema", fmt.schema_, fmt.name or "response")


def _tools(body: wire.ResponseCreateRequest | wire.InputTokensRequest) -> tuple[Tool, ...]:
    return tuple(
        Tool(t.name, t.description or "", t.parameters or {"type": "object", "properties": {}})
        for t in body.tools or ()
        if isinstance(t, wire.FunctionTool)
    )


def _tool_choice(choice: wire.ToolChoiceField | None, tools: Sequence[Tool]) -> ToolChoice:
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(choice, wire.OtherChoice):
        raise RequestError(f"tool_choice type '{choice.type}' is not supported", param="tool_choice")
    if isinstance(choice, wire.FunctionChoice):
        if choice.name not in {t.name for t in tools}:
            raise RequestError(
                f"tool_choice names function '{choice.name}', which is not in tools", param="tool_choice"
            )
        return ToolChoice("tool", choice.name)
    if choice == "required" and not tools:
        raise RequestError("tool_choice 'required' needs at least one tool", param="tool_choice")
    return ToolChoice(choice)


def inference_request(
    body: wire.ResponseCreateRequest | wire.InputTokensRequest, model: str, conversation: Sequence[Item]
) -> InferenceRequest:
    """The core request for ``body`` over the whole ``conversation`` (earlier turns, then the input)."""
    chat = messages(conversation, body.instructions)
    if not any(m.role != "system" for m in chat):
        raise RequestError("you must provide input (or a previous_response_id to continue)", param="input")
    tools = _tools(body)
    sampling = Sampling()
    user: str | None = None
    if isinstance(body, wire.ResponseCreateRequest):
        want_logprobs = LOGPROBS_INCLUDE in (body.include or ())
        sampling = Sampling(
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            logprobs=(body.top_logprobs or 0) if want_logprobs else None,
            speculative=body.speculative,
        )
        user = body.user or body.safety_identifier
    return InferenceRequest(
        "chat",
        model,
        messages=chat,
        sampling=sampling,
        response_format=_response_format(body.text),
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        user=user,
    )


# ----- output: core -> response objects --------------------------------------------------------------
def usage_body(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


def logprobs_body(items: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    return token_logprobs(items)


def message_item(id_: str, text: str, status: str, logprobs: list[dict[str, Any]] | None = None) -> Item:
    """An assistant ``message`` output item with one ``output_text`` part."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
    return {"id": id_, "type": "message", "status": status, "role": "assistant", "content": [part]}


def function_call_item(id_: str, call_id: str, name: str, arguments: str, status: str = "completed") -> Item:
    return {
        "id": id_,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def response_status(finish: FinishReason | None) -> str:
    return "incomplete" if finish == "length" else "completed"


def output_items(result: Result) -> list[Item]:
    """A whole answer's output: its text as a message (also when empty and nothing else was said),
    then one ``function_call`` item per tool call."""
    choice = result.choices[0]
    status = response_status(choice.finish_reason)
    items: list[Item] = []
    if choice.text or not choice.tool_calls:
        logprobs = logprobs_body(choice.logprobs) if choice.logprobs else None
        items.append(message_item(item_id("msg"), choice.text, status, logprobs))
    for call in choice.tool_calls:
        items.append(
            function_call_item(item_id("fc"), call.id or item_id("call"), call.name, call.arguments, status)
        )
    return items


def _tool_echo(tool: wire.ToolField) -> dict[str, Any]:
    assert isinstance(tool, wire.FunctionTool)  # check_supported refused the others
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }


def _text_echo(text: wire.TextConfig | None) -> dict[str, Any]:
    fmt = text.format if text is not None else None
    echo: dict[str, Any] = {"format": {"type": "text"}}
    if fmt is not None and fmt.type == "json_schema":
        echo["format"] = {
            "type": "json_schema",
            "name": fmt.name or "response",
            "schema": fmt.schema_,
            "description": fmt.description,
            "strict": fmt.strict,
        }
    elif fmt is not None:
        echo["format"] = {"type": fmt.type}
    if text is not None and text.verbosity is not None:
        echo["verbosity"] = text.verbosity
    return echo


def response_frame(body: wire.ResponseCreateRequest, id_: str, created_at: int) -> dict[str, Any]:
    """The response object before any output: status ``in_progress``, the request's settings echoed."""
    choice = body.tool_choice
    tool_choice: Any = "auto" if choice is None else choice
    if isinstance(choice, wire.FunctionChoice):
        tool_choice = {"type": "function", "name": choice.name}
    return {
        "id": id_,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "model": body.model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.store is not False,
        "temperature": body.temperature,
        "text": _text_echo(body.text),
        "tool_choice": tool_choice,
        "tools": [_tool_echo(t) for t in body.tools or ()],
        "top_logprobs": body.top_logprobs,
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": body.user,
        "safety_identifier": body.safety_identifier,
        "prompt_cache_key": body.prompt_cache_key,
        "metadata": body.metadata or {},
    }


def finished(
    frame: dict[str, Any], output: list[Item], finish: FinishReason | None, usage: Usage
) -> dict[str, Any]:
    """The frame once the answer is whole: ``completed``, or ``incomplete`` when it hit the token limit."""
    status = response_status(finish)
    response = {**frame, "status": status, "output": output, "usage": usage_body(usage)}
    if status == "incomplete":
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["completed_at"] = int(time.time())
    return response


def response_of(frame: dict[str, Any], result: Result) -> dict[str, Any]:
    return finished(frame, output_items(result), result.choices[0].finish_reason, result.usage)


def failed(frame: dict[str, Any], output: list[Item], exc: BaseException) -> dict[str, Any]:
    """The frame after the answer broke off: status ``failed`` and an ``error`` object."""
    if not isinstance(exc, LLMHostError):
        log.warning("response stream ended with an unexpected error", exc_info=exc)
    info = classify(exc)
    code = "rate_limit_exceeded" if info.kind in ("rate_limit", "overloaded") else "server_error"
    return {**frame, "status": "failed", "output": output, "error": {"code": code, "message": info.message}}
