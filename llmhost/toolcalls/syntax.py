"""The tool-call syntaxes models are trained on, and how to tell which one a model uses.

Each syntax is the text a model writes to call a tool (shapes as llama.cpp's ``common/chat.cpp`` parses them):

``hermes``   Hermes 2 Pro, Qwen 2.5/3, and llmhost's own built-in templates::

                 <tool_call>
                 {"name": "get_weather", "arguments": {"city": "Paris"}}
                 </tool_call>

``llama3``   Llama 3.1-3.3: a bare JSON object as the whole message, optionally after ``<|python_tag|>``::

                 {"name": "get_weather", "parameters": {"city": "Paris"}}

``mistral``  Mistral Nemo / Small 3.x: a JSON array after the ``[TOOL_CALLS]`` control token::

                 [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]

Every syntax's parser also accepts the key the other syntaxes use (``arguments`` / ``parameters``).
"""

from __future__ import annotations

import enum
import os
import re

__all__ = ["ToolSyntax", "detect_syntax", "new_call_id"]


class ToolSyntax(enum.StrEnum):
    """How a model writes tool calls."""

    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"

    @property
    def start_markers(self) -> tuple[str, ...]:
        """Text that opens a call (region) anywhere in the output."""
        return _START_MARKERS[self]

    @property
    def end_marker(self) -> str:
        """Text that closes one call ('' where the JSON itself ends the call)."""
        return "</tool_call>" if self is ToolSyntax.HERMES else ""


_START_MARKERS: dict[ToolSyntax, tuple[str, ...]] = {
    ToolSyntax.HERMES: ("<tool_call>",),
    ToolSyntax.LLAMA3: ("<|python_tag|>",),
    ToolSyntax.MISTRAL: ("[TOOL_CALLS]",),
}

_MISTRAL_NAMES = re.compile(r"mistral|mixtral|ministral|devstral|magistral|codestral|pixtral", re.IGNORECASE)
_LLAMA3_NAMES = re.compile(r"llama[-_ .]?3", re.IGNORECASE)


def detect_syntax(template_source: str | None, architecture: str, model_name: str) -> ToolSyntax:
    """The tool-call syntax of a model, judged first by its chat template, as llama.cpp does.

    - a template writing ``<tool_call>`` (Hermes, Qwen): ``hermes``;
    - ``<|python_tag|>`` or an ``ipython`` header, or Llama 3 headers with a ``"parameters"`` call shape:
      ``llama3``;
    - ``[TOOL_CALLS]``: ``mistral``;
    - a template that describes tools in a shape of its own: a ``llama3`` / ``mistral`` name
      (``model_name`` or ``architecture``) picks that syntax;
    - anything else, including no template (llmhost's built-in templates write Hermes calls) and templates
      without tool support (tools are then described to the model in Hermes style): ``hermes``.
    """
    source = template_source or ""
    if "<tool_call>" in source:
        return ToolSyntax.HERMES
    if "<|python_tag|>" in source or "<|start_header_id|>ipython<|end_header_id|>" in source:
        return ToolSyntax.LLAMA3
    if "<|start_header_id|>" in source and '"parameters"' in source:
        return ToolSyntax.LLAMA3
    if "[TOOL_CALLS]" in source:
        return ToolSyntax.MISTRAL
    if "tools" in source:  # tool-aware, but in no shape we recognise by its markers
        hint = f"{model_name} {architecture}"
        if _MISTRAL_NAMES.search(hint):
            return ToolSyntax.MISTRAL
        if _LLAMA3_NAMES.search(hint):
            return ToolSyntax.LLAMA3
    return ToolSyntax.HERMES


def new_call_id(syntax: ToolSyntax) -> str:
    """A fresh tool-call id: ``call_`` and 24 hex digits, or 9 alphanumerics for ``mistral``, whose
    templates reject any other id when the call comes back in the history."""
    if syntax is ToolSyntax.MISTRAL:
        return os.urandom(5).hex()[:9]
    return f"call_{os.urandom(12).hex()}"
