"""Which tool-call syntax a model uses, judged by its chat template, and the call ids each one gets."""

from __future__ import annotations

import re

import pytest

from llmhost.models.templates import BUILTIN_TEMPLATES
from llmhost.toolcalls import ToolSyntax, detect_syntax, new_call_id

QWEN = '{%- if tools %}<|im_start|>system ... <tool_call>\n{"name": ...}\n</tool_call>{%- endif %}'
LLAMA31 = "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}{{- '<|python_tag|>' }}"
LLAMA32 = (
    '{%- if tools is not none %}{{- \'Respond in the format {"name": function name, "parameters": '
    "dictionary of argument name and its value}.' }}{%- endif %}"
    "{{- '<|start_header_id|>user<|end_header_id|>' }}"
)
NEMO = '{%- if tools is not none %}[AVAILABLE_TOOLS]{% endif %}{{- "[TOOL_CALLS][" }}'
PLAIN = "{% for m in messages %}{{ m.content }}{% endfor %}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (QWEN, ToolSyntax.HERMES),
        (LLAMA31, ToolSyntax.LLAMA3),
        (LLAMA32, ToolSyntax.LLAMA3),
        (NEMO, ToolSyntax.MISTRAL),
        (PLAIN, ToolSyntax.HERMES),
        (None, ToolSyntax.HERMES),
        (BUILTIN_TEMPLATES["chatml"], ToolSyntax.HERMES),
        (BUILTIN_TEMPLATES["gemma"], ToolSyntax.HERMES),
    ],
)
def test_the_template_decides_the_syntax(source: str | None, expected: ToolSyntax) -> None:
    assert detect_syntax(source, "llama", "some-model") is expected


def test_a_template_without_tool_support_gets_hermes_whatever_the_model_is_called() -> None:
    # Its tools are described to the model Hermes style, so that is what the model will write.
    assert detect_syntax(PLAIN, "llama", "Mistral-7B-Instruct") is ToolSyntax.HERMES
    assert detect_syntax(None, "llama", "Meta-Llama-3.1-8B") is ToolSyntax.HERMES


def test_a_tool_aware_template_in_an_unknown_shape_falls_back_on_the_model_name() -> None:
    unknown = "{% if tools %}{{ tools | tojson }}{% endif %}"
    assert detect_syntax(unknown, "llama", "Mistral-Small-24B") is ToolSyntax.MISTRAL
    assert detect_syntax(unknown, "llama", "Llama-3.2-3B-Instruct") is ToolSyntax.LLAMA3
    assert detect_syntax(unknown, "qwen2", "qwen2.5-7b") is ToolSyntax.HERMES


def test_call_ids_follow_openai_except_for_mistral() -> None:
    assert re.fullmatch(r"call_[0-9a-f]{24}", new_call_id(ToolSyntax.HERMES))
    assert re.fullmatch(r"call_[0-9a-f]{24}", new_call_id(ToolSyntax.LLAMA3))
    assert re.fullmatch(r"[0-9a-f]{9}", new_call_id(ToolSyntax.MISTRAL))  # Mistral templates need 9
    assert new_call_id(ToolSyntax.HERMES) != new_call_id(ToolSyntax.HERMES)
