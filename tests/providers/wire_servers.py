"""Loopback servers speaking Anthropic's, Ollama's and OpenAI's wire formats, built from their API docs.

Each answers deterministically: the reply is ``"echo: <last user text>"``, cut into word pieces
(``"echo:"``, ``" hello"``, ...), one piece per token. Usage counts whitespace-separated words of the
prompt and the pieces sent; ``max_tokens`` / ``num_predict`` cut the pieces (finish ``length``), a stop
sequence cuts the text before it (finish ``stop``). Every request is recorded in ``app.state.requests``
(``{"path", "headers", "body"}``) so tests can check what reached the upstream.

Model names trigger failures: ``*overloaded*`` answers 529 (Anthropic) / 503, ``*error-midstream*``
streams two pieces and then an in-band error.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from tests.conftest import LiveServer

__all__ = ["EchoAnswer", "anthropic_app", "echo_answer", "ollama_app", "openai_app", "recorded", "words"]

_PIECE = re.compile(r"\s*\S+")


def recorded(live: LiveServer) -> list[dict[str, Any]]:
    """The requests a live wire server has seen, oldest first: ``{"path", "headers", "body"}``."""
    app = cast(Starlette, live.server.config.app)
    return cast(list[dict[str, Any]], app.state.requests)


def words(text: str) -> int:
    return len(text.split())


class EchoAnswer:
    """The deterministic answer to a prompt: its pieces, why it ended, and the stop sequence hit."""

    def __init__(self, prompt: str, max_tokens: int | None, stops: list[str]) -> None:
        text = f"echo: {prompt}"
        self.stop_sequence: str | None = None
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if hits:
            at, self.stop_sequence = min(hits)
            text = text[:at]
        pieces = _PIECE.findall(text)
        self.reason = "stop_sequence" if self.stop_sequence is not None else "end_turn"
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces, self.reason, self.stop_sequence = pieces[:max_tokens], "max_tokens", None
        self.pieces = pieces

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def openai_finish(self) -> str:
        return "length" if self.reason == "max_tokens" else "stop"


def echo_answer(prompt: str, max_tokens: int | None = None, stops: list[str] | None = None) -> EchoAnswer:
    return EchoAnswer(prompt, max_tokens, stops or [])


async def _record(request: Request) -> dict[str, Any]:
    raw = await request.body()
    body = json.loads(raw) if raw else {}
    request.app.state.requests.append(
        {"path": request.url.path, "headers": dict(request.headers), "body": body}
    )
    return cast(dict[str, Any], body)


def _sse(event: str | None, data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# -- Anthropic Messages API --------------------------------------------------------------------------


def _anthropic_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_test"}, status
    )


def _block_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b["text"] for b in content if b.get("type") == "text"]


def anthropic_app(
    api_key: str,
    models: tuple[str, ...] = ("claude-echo-1", "claude-echo-2", "claude-echo-3"),
    page_size: int = 2,
) -> Starlette:
    """``POST /v1/messages`` (plain and streamed) and ``GET /v1/models`` (paginated by ``page_size``)."""

    def check_headers(request: Request) -> JSONResponse | None:
        if request.headers.get("x-api-key") != api_key:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != "2023-06-01":
            return _anthropic_error(400, "invalid_request_error", "anthropic-version header is required")
        return None

    async def messages(request: Request) -> Response:
        body = await _record(request)
        if (failure := check_headers(request)) is not None:
            return failure
        model = body.get("model")
        if not isinstance(model, str):
            return _anthropic_error(400, "invalid_request_error", "model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return _anthropic_error(
                400, "invalid_request_error", "messages: at least one message is required"
            )
        for m in msgs:
            if m.get("role") not in ("user", "assistant"):
                return _anthropic_error(
                    400,
                    "invalid_request_error",
                    f'messages: Unexpected role "{m.get("role")}". The Messages API accepts a top-level '
                    '`system` parameter, not "system" as an input message role.',
                )
        for prev, cur in itertools.pairwise(msgs):
            if prev["role"] == cur["role"]:
                return _anthropic_error(400, "invalid_request_error", "roles must alternate")
        if "overloaded" in model:
            return _anthropic_error(529, "overloaded_error", "Overloaded")
        system = body.get("system") or ""
        prompt_words = words(" ".join(_block_texts(system))) + sum(
            words(" ".join(_block_texts(m["content"]))) for m in msgs
        )
        last_user = next(m for m in reversed(msgs) if m["role"] == "user")
        answer = echo_answer(
            " ".join(_block_texts(last_user["content"])), max_tokens, body.get("stop_sequences")
        )
        msg_id = f"msg_{len(request.app.state.requests):06d}"
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": answer.text}],
                    "stop_reason": answer.reason,
                    "stop_sequence": answer.stop_sequence,
                    "usage": {"input_tokens": prompt_words, "output_tokens": len(answer.pieces)},
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
                "usage": {"input_tokens": prompt_words, "output_tokens": 1},
            }
            yield _sse("message_start", {"type": "message_start", "message": start})
            yield _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield _sse("ping", {"type": "ping"})
            for i, piece in enumerate(answer.pieces):
                if "error-midstream" in model and i == 2:
                    error = {"type": "overloaded_error", "message": "Overloaded"}
                    yield _sse("error", {"type": "error", "error": error})
                    return
                delta = {"type": "text_delta", "text": piece}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": answer.reason, "stop_sequence": answer.stop_sequence},
                    "usage": {"output_tokens": len(answer.pieces)},
                },
            )
            yield _sse("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    async def list_models(request: Request) -> Response:
        request.app.state.requests.append(
            {"path": request.url.path, "headers": dict(request.headers), "body": {}}
        )
        if (failure := check_headers(request)) is not None:
            return failure
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
        routes=[Route("/v1/messages", messages, methods=["POST"]), Route("/v1/models", list_models)]
    )
    app.state.requests = []
    return app


# -- Ollama native API -------------------------------------------------------------------------------


def _ollama_tail(model: str, answer: EchoAnswer, prompt_words: int) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": "2025-01-01T00:00:00.000000Z",
        "done": True,
        "done_reason": "length" if answer.reason == "max_tokens" else "stop",
        "total_duration": 1_000_000,
        "load_duration": 1_000,
        "prompt_eval_count": prompt_words,
        "prompt_eval_duration": 10_000,
        "eval_count": len(answer.pieces),
        "eval_duration": 100_000,
    }


def _embedding(text: str) -> list[float]:
    raw = [float(len(text)), float(sum(c in "aeiou" for c in text)), float(text.count(" ")), 1.0]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def ollama_app(models: tuple[str, ...] = ("llama3.2:1b", "qwen2.5:0.5b")) -> Starlette:
    """``/api/chat`` and ``/api/generate`` (NDJSON streams by default), ``/api/embed``, ``/api/tags``,
    ``/api/version``."""

    def not_found(model: Any) -> JSONResponse:
        return JSONResponse({"error": f'model "{model}" not found, try pulling it first'}, 404)

    def known(model: Any) -> bool:
        return model in models or (isinstance(model, str) and "error-midstream" in model)

    def respond(body: dict[str, Any], field: str, prompt: str, prompt_words: int) -> Response:
        options = body.get("options") or {}
        answer = echo_answer(prompt, options.get("num_predict"), _stops(options.get("stop")))
        model = body["model"]
        tail = _ollama_tail(model, answer, prompt_words)
        if not body.get("stream", True):
            content = {"role": "assistant", "content": answer.text} if field == "message" else answer.text
            return JSONResponse({**tail, field: content})

        async def lines() -> AsyncIterator[bytes]:
            for i, piece in enumerate(answer.pieces):
                if "error-midstream" in model and i == 2:
                    yield (
                        json.dumps({"error": "an error was encountered while running the model"}).encode()
                        + b"\n"
                    )
                    return
                content = {"role": "assistant", "content": piece} if field == "message" else piece
                line = {"model": model, "created_at": "2025-01-01T00:00:00Z", field: content, "done": False}
                yield json.dumps(line).encode() + b"\n"
            last = {"role": "assistant", "content": ""} if field == "message" else ""
            yield json.dumps({**tail, field: last}).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def chat(request: Request) -> Response:
        body = await _record(request)
        if not known(body.get("model")):
            return not_found(body.get("model"))
        msgs = body.get("messages") or []
        last_user = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        return respond(body, "message", last_user, sum(words(m["content"]) for m in msgs))

    async def generate(request: Request) -> Response:
        body = await _record(request)
        if not known(body.get("model")):
            return not_found(body.get("model"))
        return respond(body, "response", body.get("prompt", ""), words(body.get("prompt", "")))

    async def embed(request: Request) -> Response:
        body = await _record(request)
        if not known(body.get("model")):
            return not_found(body.get("model"))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse(
            {
                "model": body["model"],
                "embeddings": [_embedding(text) for text in inputs],
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


# -- OpenAI-compatible -------------------------------------------------------------------------------


def openai_app(api_key: str | None = None, models: tuple[str, ...] = ("echo-1",)) -> Starlette:
    """A trivial OpenAI-compatible upstream: chat and completions (plain and SSE), embeddings, models."""

    def unauthorized(request: Request) -> JSONResponse | None:
        if api_key is None or request.headers.get("authorization") == f"Bearer {api_key}":
            return None
        error = {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
        return JSONResponse({"error": error}, 401)

    def answer_for(body: dict[str, Any], prompt: str, prompt_words: int, chat: bool) -> Response:
        answer = echo_answer(
            prompt, body.get("max_completion_tokens") or body.get("max_tokens"), _stops(body.get("stop"))
        )
        usage = {
            "prompt_tokens": prompt_words,
            "completion_tokens": len(answer.pieces),
            "total_tokens": prompt_words + len(answer.pieces),
        }
        created, model = int(time.time()), body["model"]
        obj = "chat.completion" if chat else "text_completion"
        base = {"id": "chatcmpl-test" if chat else "cmpl-test", "created": created, "model": model}
        if not body.get("stream"):
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "logprobs": None,
                }
            else:
                choice = {"index": 0, "text": answer.text, "logprobs": None}
            choice["finish_reason"] = answer.openai_finish
            return JSONResponse({**base, "object": obj, "choices": [choice], "usage": usage})

        def chunk(delta: dict[str, Any] | str, finish: str | None = None) -> bytes:
            if chat:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk" if chat else "text_completion"
            return _sse(None, {**base, "object": obj, "choices": [choice]})

        async def events() -> AsyncIterator[bytes]:
            if chat:
                yield chunk({"role": "assistant", "content": ""})
            for piece in answer.pieces:
                yield chunk({"content": piece} if chat else piece)
            yield chunk({} if chat else "", answer.openai_finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield _sse(None, {**base, "object": obj, "choices": [], "usage": usage})
            yield _sse(None, "[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat_completions(request: Request) -> Response:
        body = await _record(request)
        if (failure := unauthorized(request)) is not None:
            return failure
        msgs = body["messages"]
        last_user = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
        return answer_for(body, last_user, sum(words(m["content"]) for m in msgs), chat=True)

    async def completions(request: Request) -> Response:
        body = await _record(request)
        if (failure := unauthorized(request)) is not None:
            return failure
        return answer_for(body, body["prompt"], words(body["prompt"]), chat=False)

    async def embeddings(request: Request) -> Response:
        body = await _record(request)
        if (failure := unauthorized(request)) is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": _embedding(t)} for i, t in enumerate(inputs)]
        n = sum(words(t) for t in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
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
