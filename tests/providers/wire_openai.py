"""A loopback OpenAI-compatible server (see ``wire_servers`` for the echo rules).

Chat and completions, plain and SSE (usage chunk with ``stream_options.include_usage``), ``n`` choices
(streamed interleaved), logprobs in both endpoints' shapes, function tools (streamed calls: id and name
first, then the arguments in fragments), a completion's ``echo``, embeddings and models. Like vLLM, a
choice that a stop string ended names it in ``stop_reason``. The system prompt's words are reported as
cached (``prompt_tokens_details.cached_tokens``). As OpenAI does, it refuses a tool message that answers
no earlier call.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.providers.wire_common import (
    LOGPROB,
    RIVAL,
    RIVAL_LOGPROB,
    echo_answer,
    embedding,
    record,
    split_in_three,
    sse,
    stops_of,
    token_logprob,
    tools_to_call,
    words,
)

__all__ = ["openai_app", "text_of"]


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, a list of parts, or null."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content if p.get("type") == "text")


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return JSONResponse({"error": error}, status)


def _history_error(msgs: list[dict[str, Any]]) -> str | None:
    called: set[str] = set()
    for i, m in enumerate(msgs):
        for call in m.get("tool_calls") or ():
            if m["role"] != "assistant" or call.get("type") != "function":
                return f"messages[{i}]: tool_calls belong to assistant messages, each of type function"
            json.loads(call["function"]["arguments"])
            called.add(call["id"])
        if m["role"] == "tool" and m.get("tool_call_id") not in called:
            return (
                f"Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                f"message with 'tool_calls' (messages[{i}])."
            )
        if m.get("content") is None and not m.get("tool_calls"):
            return f"messages[{i}]: content is required"
    return None


def _text_logprobs(pieces: list[str], top: int, offset: int) -> dict[str, Any]:
    tops = [{piece: LOGPROB, RIVAL: RIVAL_LOGPROB} for piece in pieces]
    offsets = [offset + sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    return {
        "tokens": pieces,
        "token_logprobs": [LOGPROB] * len(pieces),
        "top_logprobs": [dict(list(t.items())[:top]) for t in tops],
        "text_offset": offsets,
    }


def openai_app(api_key: str | None = None, models: tuple[str, ...] = ("echo-1",)) -> Starlette:
    """A trivial OpenAI-compatible upstream: chat and completions (plain and SSE), embeddings, models."""

    def unauthorized(request: Request) -> JSONResponse | None:
        if api_key is None or request.headers.get("authorization") == f"Bearer {api_key}":
            return None
        return _error(401, "Incorrect API key provided", "invalid_api_key")

    def answer_for(
        body: dict[str, Any], prompt: str, prompt_words: int, cached: int, calls: list[str], chat: bool
    ) -> Response:
        answer = echo_answer(
            prompt, body.get("max_completion_tokens") or body.get("max_tokens"), stops_of(body.get("stop"))
        )
        n = int(body.get("n") or 1)
        echo = prompt if not chat and body.get("echo") else ""
        pieces = [] if calls else answer.pieces
        finish = "tool_calls" if calls else answer.openai_finish
        stop_reason = answer.stop_sequence if not calls else None
        completion_tokens = n * (5 * len(calls) if calls else len(pieces))
        usage = {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_words + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        }
        created, model = int(time.time()), body["model"]
        base = {"id": "chatcmpl-test" if chat else "cmpl-test", "created": created, "model": model}
        top = int((body.get("top_logprobs") if chat else body.get("logprobs")) or 0)
        with_logprobs = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
        tool_calls: list[dict[str, Any]] = [
            {
                "id": f"call_{k}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({"text": prompt})},
            }
            for k, name in enumerate(calls)
        ]

        def logprobs(these: list[str], offset: int = 0) -> dict[str, Any] | None:
            if not with_logprobs:
                return None
            if chat:
                return {"content": [token_logprob(p, top) for p in these], "refusal": None}
            return _text_logprobs(these, top, offset)

        if not body.get("stream"):
            choices = []
            for i in range(n):
                if chat:
                    message: dict[str, Any] = {
                        "role": "assistant",
                        "content": answer.text if not calls else None,
                    }
                    if calls:
                        message["tool_calls"] = tool_calls
                    choice: dict[str, Any] = {"index": i, "message": message}
                else:
                    choice = {"index": i, "text": echo + answer.text}
                choice.update(
                    logprobs=logprobs(pieces, len(echo)), finish_reason=finish, stop_reason=stop_reason
                )
                choices.append(choice)
            obj = "chat.completion" if chat else "text_completion"
            return JSONResponse({**base, "object": obj, "choices": choices, "usage": usage})

        def chunk(i: int, delta: dict[str, Any] | str, *, finish: str | None = None, lp: Any = None) -> bytes:
            if chat:
                choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
            else:
                choice = {"index": i, "text": delta, "logprobs": lp, "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = stop_reason
            obj = "chat.completion.chunk" if chat else "text_completion"
            return sse(None, {**base, "object": obj, "choices": [choice]})

        async def events() -> AsyncIterator[bytes]:
            if chat:
                for i in range(n):
                    yield chunk(i, {"role": "assistant", "content": ""})
            elif echo:
                for i in range(n):
                    yield chunk(i, echo)
            offset = len(echo)
            for piece in pieces:
                for i in range(n):
                    yield chunk(i, {"content": piece} if chat else piece, lp=logprobs([piece], offset))
                offset += len(piece)
            for k, call in enumerate(tool_calls):
                for i in range(n):
                    function = {"name": call["function"]["name"], "arguments": ""}
                    head = {"index": k, "id": call["id"], "type": "function", "function": function}
                    yield chunk(i, {"tool_calls": [head]})
                    for part in split_in_three(call["function"]["arguments"]):
                        yield chunk(i, {"tool_calls": [{"index": k, "function": {"arguments": part}}]})
            for i in range(n):
                yield chunk(i, {} if chat else "", finish=finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield sse(None, {**base, "object": obj, "choices": [], "usage": usage})
            yield sse(None, "[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat_completions(request: Request) -> Response:
        body = await record(request)
        if (failure := unauthorized(request)) is not None:
            return failure
        msgs = body["messages"]
        if (problem := _history_error(msgs)) is not None:
            return _error(400, problem)
        last = msgs[-1]
        prompt = text_of(last["content"]) if last["role"] in ("user", "tool") else ""
        calls: list[str] = []
        choice = body.get("tool_choice", "auto")
        if last["role"] == "user" and body.get("tools") and choice != "none":
            calls = tools_to_call(
                [t["function"]["name"] for t in body["tools"]],
                prompt,
                forced=choice["function"]["name"] if isinstance(choice, dict) else None,
                required=choice == "required",
                parallel=body.get("parallel_tool_calls", True),
            )
        prompt_words = sum(words(text_of(m.get("content"))) for m in msgs)
        cached = sum(words(text_of(m["content"])) for m in msgs if m["role"] == "system")
        return answer_for(body, prompt, prompt_words, cached, calls, chat=True)

    async def completions(request: Request) -> Response:
        body = await record(request)
        if (failure := unauthorized(request)) is not None:
            return failure
        prompt = body["prompt"] if isinstance(body["prompt"], str) else " ".join(map(str, body["prompt"]))
        return answer_for(body, prompt, words(prompt), 0, [], chat=False)

    async def embeddings(request: Request) -> Response:
        body = await record(request)
        if (failure := unauthorized(request)) is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in inputs]
        data = [{"object": "embedding", "index": i, "embedding": embedding(t)} for i, t in enumerate(texts)]
        n = sum(words(t) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data[::-1],  # out of order on purpose: clients must go by "index"
                "model": body["model"],
                "usage": {"prompt_tokens": n, "total_tokens": n},
            }
        )

    async def list_models(request: Request) -> Response:
        if (failure := unauthorized(request)) is not None:
            return failure
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in models]
        return JSONResponse({"object": "list", "data": data})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", list_models),
        ]
    )
    app.state.requests = []
    return app
