"""Typed messages and tools in the shapes Hugging Face chat templates read.

Templates (``tokenizer.chat_template``) expect OpenAI-like dicts with the arguments of a call as a
*mapping* (they write ``tool_call.arguments | tojson``)::

    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}
    {"role": "tool", "tool_call_id": "call_1", "name": "f", "content": "42"}
    {"type": "function", "function": {"name": "f", "description": "...", "parameters": {...}}}

``tool_calls`` is only present when there are calls: several templates (Mistral's, Llama's) test for
the key, not for an empty list.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from llmhost.core.types import ChatMessage, Tool, ToolCall
from llmhost.errors import RequestError
from llmhost.toolcalls.syntax import ToolSyntax

__all__ = ["to_template_messages", "to_template_tools"]

_MISTRAL_ID = re.compile(r"[a-zA-Z0-9]{9}")


def to_template_messages(
    messages: Sequence[ChatMessage], *, syntax: ToolSyntax | None = None
) -> list[dict[str, Any]]:
    """``messages`` as template dicts (see the module doc).

    A tool message without a ``name`` gets the name of the call it answers, when an earlier assistant
    message made that call. With ``syntax`` ``mistral``, call ids that are not 9 alphanumerics (which
    Mistral's templates reject) are replaced by a stable 9-character digest of the id, in the calls and
    in the answers alike. Image parts are refused: the local models read text only.
    """
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.parts:
            raise RequestError("image content is not supported: this model reads text only", param="messages")
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.role == "assistant" and message.tool_calls:
            item["tool_calls"] = [_call(call, syntax) for call in message.tool_calls]
            names.update((call.id, call.name) for call in message.tool_calls)
        if message.role == "tool":
            if message.tool_call_id is not None:
                item["tool_call_id"] = _call_id(message.tool_call_id, syntax)
            name = message.name or names.get(message.tool_call_id or "")
            if name:
                item["name"] = name
        out.append(item)
    return out


def to_template_tools(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """``tools`` as template dicts: ``{"type": "function", "function": {name, description?, parameters}}``."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        function["parameters"] = tool.parameters
        out.append({"type": "function", "function": function})
    return out


def _call(call: ToolCall, syntax: ToolSyntax | None) -> dict[str, Any]:
    return {
        "id": _call_id(call.id, syntax),
        "type": "function",
        "function": {"name": call.name, "arguments": _arguments(call.arguments)},
    }


def _arguments(text: str) -> Any:
    """The arguments as a mapping; text that is not a JSON object is passed on as it is."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def _call_id(call_id: str, syntax: ToolSyntax | None) -> str:
    if syntax is not ToolSyntax.MISTRAL or _MISTRAL_ID.fullmatch(call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]
