"""A loopback server speaking Ollama's native API (see ``wire_servers`` for the echo rules).

As Ollama does, it sends each tool call whole (arguments as an object, ``done_reason`` ``stop``) and
gives calls ids (``call_...``), except for models named ``*old*``, which answer like Ollama releases
before call ids existed. Like Go's JSON decoding, it refuses arguments that are not an object and
images that are not base64.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.providers.wire_common import (
    EchoAnswer,
    echo_answer,
    embedding,
    record,
    stops_of,
    token_logprob,
    tools_to_call,
    words,
)

__all__ = ["ollama_app"]


def _tail(model: str, answer: EchoAnswer, prompt_words: int, output: int) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": "2025-01-01T00:00:00.000000Z",
        "done": True,
        "done_reason": "length" if answer.reason == "max_tokens" else "stop",
        "total_duration": 1_000_000,
        "load_duration": 1_000,
        "prompt_eval_count": prompt_words,
        "prompt_eval_duration": 10_000,
        "eval_count": output,
        "eval_duration": 100_000,
    }


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, 400)


def _history_error(msgs: list[dict[str, Any]]) -> str | None:
    for m in msgs:
        if m.get("role") not in ("system", "user", "assistant", "tool"):
            return f"invalid role {m.get('role')!r}"
        if not isinstance(m.get("content", ""), str):
            return "json: cannot unmarshal array into Go struct field Message.messages.content of type string"
        for call in m.get("tool_calls") or ():
            if not isinstance(call.get("function", {}).get("arguments"), dict):
                return "json: cannot unmarshal string into Go struct field ToolCallFunction.arguments"
        for image in m.get("images") or ():
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError, TypeError):
                return "illegal base64 data in images"
    return None


def ollama_app(models: tuple[str, ...] = ("llama3.2:1b", "qwen2.5:0.5b")) -> Starlette:
    """``/api/chat`` and ``/api/generate`` (NDJSON streams by default), ``/api/embed``, ``/api/tags``,
    ``/api/version``."""

    def not_found(model: Any) -> JSONResponse:
        return JSONResponse({"error": f'model "{model}" not found, try pulling it first'}, 404)

    def known(model: Any) -> bool:
        return model in models or (isinstance(model, str) and ("error-midstream" in model or "old" in model))

    def respond(
        body: dict[str, Any], field: str, prompt: str, prompt_words: int, calls: list[str]
    ) -> Response:
        options = body.get("options") or {}
        answer = echo_answer(prompt, options.get("num_predict"), stops_of(options.get("stop")))
        model = body["model"]
        top = int(body.get("top_logprobs") or 0)
        with_logprobs = bool(body.get("logprobs"))
        tool_calls = []
        for i, name in enumerate(calls):
            call: dict[str, Any] = {"function": {"index": i, "name": name, "arguments": {"text": prompt}}}
            if "old" not in model:
                call["id"] = f"call_{len(body['messages'])}{i}"
            tool_calls.append(call)
        pieces = [] if calls else answer.pieces
        tail = _tail(model, answer, prompt_words, 5 * len(calls) if calls else len(pieces))
        if not body.get("stream", True):
            if field == "message":
                content: Any = {"role": "assistant", "content": answer.text if not calls else ""}
                if calls:
                    content["tool_calls"] = tool_calls
            else:
                content = answer.text
            whole = {**tail, field: content}
            if with_logprobs:
                whole["logprobs"] = [token_logprob(p, top) for p in pieces]
            return JSONResponse(whole)

        async def lines() -> AsyncIterator[bytes]:
            for i, piece in enumerate(pieces):
                if "error-midstream" in model and i == 2:
                    error = {"error": "an error was encountered while running the model"}
                    yield json.dumps(error).encode() + b"\n"
                    return
                content = {"role": "assistant", "content": piece} if field == "message" else piece
                line = {"model": model, "created_at": "2025-01-01T00:00:00Z", field: content, "done": False}
                if with_logprobs:
                    line["logprobs"] = [token_logprob(piece, top)]
                yield json.dumps(line).encode() + b"\n"
            if tool_calls:
                message = {"role": "assistant", "content": "", "tool_calls": tool_calls}
                line = {
                    "model": model,
                    "created_at": "2025-01-01T00:00:00Z",
                    "message": message,
                    "done": False,
                }
                yield json.dumps(line).encode() + b"\n"
            last = {"role": "assistant", "content": ""} if field == "message" else ""
            yield json.dumps({**tail, field: last}).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def chat(request: Request) -> Response:
        body = await record(request)
        if not known(body.get("model")):
            return not_found(body.get("model"))
        msgs = body.get("messages") or []
        if (failure := _history_error(msgs)) is not None:
            return _bad_request(failure)
        last = msgs[-1] if msgs else {"role": "user", "content": ""}
        calls: list[str] = []
        if last["role"] == "user":
            offered = [t["function"]["name"] for t in body.get("tools") or ()]
            calls = tools_to_call(offered, last["content"], forced=None, required=False, parallel=True)
        return respond(body, "message", last["content"], sum(words(m["content"]) for m in msgs), calls)

    async def generate(request: Request) -> Response:
        body = await record(request)
        if not known(body.get("model")):
            return not_found(body.get("model"))
        return respond(body, "response", body.get("prompt", ""), words(body.get("prompt", "")), [])

    async def embed(request: Request) -> Response:
        body = await record(request)
        if not known(body.get("model")):
            return not_found(body.get("model"))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse(
            {
                "model": body["model"],
                "embeddings": [embedding(text) for text in inputs],
                "total_duration": 1_000,
                "load_duration": 10,
                "prompt_eval_count": sum(words(text) for text in inputs),
            }
        )

    async def tags(request: Request) -> Response:
        entries = [
            {
                "name": m,
                "model": m,
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 1_000_000,
                "digest": f"{i:064x}",
                "details": {
                    "format": "gguf",
                    "family": "llama",
                    "parameter_size": "1B",
                    "quantization_level": "Q4_K_M",
                },
            }
            for i, m in enumerate(models)
        ]
        return JSONResponse({"models": entries})

    async def version(request: Request) -> Response:
        return JSONResponse({"version": "0.11.4"})

    app = Starlette(
        routes=[
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/generate", generate, methods=["POST"]),
            Route("/api/embed", embed, methods=["POST"]),
            Route("/api/tags", tags),
            Route("/api/version", version),
        ]
    )
    app.state.requests = []
    return app
