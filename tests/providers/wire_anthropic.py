"""A loopback server speaking Anthropic's Messages API (see ``wire_servers`` for the echo rules)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.providers.wire_common import echo_answer, record, split_in_three, sse, tools_to_call, words

__all__ = ["anthropic_app"]

# -- Anthropic Messages API --------------------------------------------------------------------------

_ANTHROPIC_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "tools",
    "tool_choice",
    "output_config",
    "thinking",
    "service_tier",
}


def _anthropic_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_test"}, status
    )


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _block_texts(content: Any) -> list[str]:
    texts = []
    for block in _blocks(content):
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            texts.extend(_block_texts(block.get("content") or ""))
    return texts


def _anthropic_history_error(msgs: list[dict[str, Any]], tools: list[str]) -> str | None:
    """What the Messages API would reject in this conversation, or None."""
    for m in msgs:
        if m.get("role") not in ("user", "assistant"):
            return (
                f'messages: Unexpected role "{m.get("role")}". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
    for prev, cur in itertools.pairwise(msgs):
        if prev["role"] == cur["role"]:
            return "roles must alternate"
    called: set[str] = set()
    for i, m in enumerate(msgs):
        blocks = _blocks(m["content"])
        kinds = [b.get("type") for b in blocks]
        others = [k for k, kind in enumerate(kinds) if kind != "tool_result"]
        if others and "tool_result" in kinds[others[0] :]:
            return f"messages.{i}: tool_result blocks must come before any other content"
        for b in blocks:
            if b.get("type") == "tool_use":
                if (
                    m["role"] != "assistant"
                    or b.get("name") not in tools
                    or not isinstance(b.get("input"), dict)
                ):
                    return (
                        f"messages.{i}: tool_use needs an assistant turn, a defined tool and an input object"
                    )
                called.add(b["id"])
            elif b.get("type") == "tool_result" and b.get("tool_use_id") not in called:
                return f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks"
            elif b.get("type") == "image" and b.get("source", {}).get("type") not in ("base64", "url"):
                return f"messages.{i}: image source type must be base64 or url"
    return None


def anthropic_app(
    api_key: str,
    models: tuple[str, ...] = ("claude-echo-1", "claude-echo-2", "claude-echo-3"),
    page_size: int = 2,
) -> Starlette:
    """``POST /v1/messages`` (plain and streamed), ``POST /v1/messages/count_tokens`` and
    ``GET /v1/models`` (paginated by ``page_size``)."""

    def check(request: Request, body: dict[str, Any], *, counting: bool = False) -> JSONResponse | None:
        if request.headers.get("x-api-key") != api_key:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != "2023-06-01":
            return _anthropic_error(400, "invalid_request_error", "anthropic-version header is required")
        allowed = {"model", "messages", "system", "tools", "tool_choice", "output_config"}
        extra = set(body) - (allowed if counting else _ANTHROPIC_FIELDS)
        if extra:
            return _anthropic_error(
                400, "invalid_request_error", f"{sorted(extra)[0]}: Extra inputs are not permitted"
            )
        if not isinstance(body.get("model"), str):
            return _anthropic_error(400, "invalid_request_error", "model: Field required")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return _anthropic_error(
                400, "invalid_request_error", "messages: at least one message is required"
            )
        tools = [t["name"] for t in body.get("tools") or ()]
        if any("input_schema" not in t for t in body.get("tools") or ()):
            return _anthropic_error(400, "invalid_request_error", "tools.0.input_schema: Field required")
        choice = body.get("tool_choice") or {"type": "auto"}
        if choice.get("type") not in ("auto", "any", "tool", "none") or (
            choice["type"] == "tool" and choice.get("name") not in tools
        ):
            return _anthropic_error(400, "invalid_request_error", "tool_choice: invalid")
        if (failure := _anthropic_history_error(msgs, tools)) is not None:
            return _anthropic_error(400, "invalid_request_error", failure)
        return None

    def prompt_words(body: dict[str, Any]) -> tuple[int, int]:
        """(words in the system prompt, words in the messages)."""
        system = words(" ".join(_block_texts(body.get("system") or "")))
        return system, sum(words(" ".join(_block_texts(m["content"]))) for m in body["messages"])

    async def messages(request: Request) -> Response:
        body = await record(request)
        if (failure := check(request, body)) is not None:
            return failure
        model, msgs = body["model"], body["messages"]
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
        if "overloaded" in model:
            return _anthropic_error(529, "overloaded_error", "Overloaded")
        system_words, message_words = prompt_words(body)
        usage = {"input_tokens": message_words, "cache_read_input_tokens": system_words}
        last = _blocks(msgs[-1]["content"])
        user_text = " ".join(_block_texts(msgs[-1]["content"]))
        choice = body.get("tool_choice") or {"type": "auto"}
        calls: list[str] = []
        if msgs[-1]["role"] == "user" and not any(b.get("type") == "tool_result" for b in last):
            offered = [] if choice["type"] == "none" else [t["name"] for t in body.get("tools") or ()]
            calls = tools_to_call(
                offered,
                user_text,
                forced=choice.get("name"),
                required=choice["type"] == "any",
                parallel=not choice.get("disable_parallel_tool_use"),
            )
        answer = echo_answer(user_text, max_tokens, body.get("stop_sequences"))
        msg_id = f"msg_{len(request.app.state.requests):06d}"
        arguments = {"text": user_text}
        if calls:
            content = [
                {"type": "tool_use", "id": f"toolu_{msg_id}_{i}", "name": name, "input": arguments}
                for i, name in enumerate(calls)
            ]
            stop_reason, stop_sequence, output = "tool_use", None, 5 * len(calls)
        else:
            content = [{"type": "text", "text": answer.text}]
            stop_reason, stop_sequence, output = answer.reason, answer.stop_sequence, len(answer.pieces)
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": stop_sequence,
                    "usage": {**usage, "output_tokens": output},
                }
            )

        async def events() -> AsyncIterator[bytes]:
            start: dict[str, Any] = {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1},
            }
            yield sse("message_start", {"type": "message_start", "message": start})
            for i, block in enumerate(content):
                first = (
                    {**block, "input": {}} if block["type"] == "tool_use" else {"type": "text", "text": ""}
                )
                yield sse(
                    "content_block_start", {"type": "content_block_start", "index": i, "content_block": first}
                )
                yield sse("ping", {"type": "ping"})
                if block["type"] == "tool_use":
                    fragments = [
                        {"type": "input_json_delta", "partial_json": part}
                        for part in split_in_three(json.dumps(block["input"]))
                    ]
                else:
                    fragments = [{"type": "text_delta", "text": piece} for piece in answer.pieces]
                for k, delta in enumerate(fragments):
                    if "error-midstream" in model and k == 2:
                        error = {"type": "overloaded_error", "message": "Overloaded"}
                        yield sse("error", {"type": "error", "error": error})
                        return
                    yield sse(
                        "content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}
                    )
                yield sse("content_block_stop", {"type": "content_block_stop", "index": i})
            yield sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": output},
                },
            )
            yield sse("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    async def count_tokens(request: Request) -> Response:
        body = await record(request)
        if (failure := check(request, body, counting=True)) is not None:
            return failure
        system_words, message_words = prompt_words(body)
        return JSONResponse(
            {"input_tokens": system_words + message_words + 10 * len(body.get("tools") or ())}
        )

    async def list_models(request: Request) -> Response:
        request.app.state.requests.append(
            {"path": request.url.path, "headers": dict(request.headers), "body": {}}
        )
        if request.headers.get("x-api-key") != api_key:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        limit = min(int(request.query_params.get("limit", 20)), page_size)
        after = request.query_params.get("after_id")
        start = models.index(after) + 1 if after is not None and after in models else 0
        page = models[start : start + limit]
        data = [
            {"type": "model", "id": m, "display_name": m.title(), "created_at": "2025-01-01T00:00:00Z"}
            for m in page
        ]
        return JSONResponse(
            {
                "data": data,
                "has_more": start + limit < len(models),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/v1/models", list_models),
        ]
    )
    app.state.requests = []
    return app
