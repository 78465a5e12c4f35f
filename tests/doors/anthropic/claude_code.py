"""A request shaped as Claude Code 2.1 sends it with ``ANTHROPIC_BASE_URL`` set (captured from a real
session, texts shortened): ``POST /v1/messages?beta=true`` with beta headers, a billing header and
cached blocks in ``system``, tools with ``$schema`` and ``cache_control``, adaptive thinking, context
management, an effort level, a JSON ``metadata.user_id``, a reminder block in the user turn, a system
turn after it (the mid-conversation system beta), and ``max_tokens`` 32,000 whatever the model."""

from __future__ import annotations

from typing import Any

PATH = "/v1/messages?beta=true"
HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,effort-2025-11-24",
    "anthropic-dangerous-direct-browser-access": "true",
    "x-app": "cli",
    "user-agent": "claude-cli/2.1.197 (external, sdk-cli)",
}
BASH: dict[str, Any] = {
    "name": "Bash",
    "description": "Executes a given bash command and returns its output.",
    "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "command": {"description": "The command to execute", "type": "string"},
            "description": {"description": "What the command does, in 5-10 words", "type": "string"},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
    "cache_control": {"type": "ephemeral"},
}


def claude_code_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": True,
        "metadata": {"user_id": '{"device_id":"1860","account_uuid":"","session_id":"d45f"}'},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "system": [
            {
                "type": "text",
                "text": "x-anthropic-billing-header: cc_version=2.1.197.1c0; cc_entrypoint=sdk-cli;",
            },
            {
                "type": "text",
                "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
                "cache_control": {"type": "ephemeral"},
            },
            {
                "type": "text",
                "text": "You are an interactive agent that helps users with software engineering tasks.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": [BASH],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>\nToday's date is 2026-12-01.\n</system-reminder>",
                    },
                    {"type": "text", "text": "say hello", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "Available agent types for the Agent tool:\n- claude: Catch-all."},
        ],
    }


def count_tokens_body(model: str) -> dict[str, Any]:
    body = claude_code_body(model)
    return {k: body[k] for k in ("model", "system", "tools", "messages", "thinking", "output_config")}
