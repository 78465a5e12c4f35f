"""A minimal OpenAI-compatible upstream that answers from memory, for measuring gateway overhead.

    .venv/bin/python bench/trivial_upstream.py [--host 127.0.0.1] [--port 0]

It prints ``listening on http://HOST:PORT`` once it accepts connections. Endpoints:

* ``POST /v1/chat/completions``: a fixed ``chat.completion``; with ``"stream": true`` the same answer as
  SSE, chunked transfer encoding: a role chunk, four content chunks, a finish chunk, a usage chunk when
  ``stream_options.include_usage`` asks for it, then ``data: [DONE]``. ``--chunk-delay-ms`` spaces the
  chunks out (default 0: all at once, so a proxy's time to first byte is its own overhead).
* ``GET /v1/models``: one model, ``bench``.
* ``GET /health``: ``{"status": "ok"}``.

It is a raw ``asyncio.Protocol`` HTTP/1.1 server with keep-alive: no framework, no validation, one
``json.loads`` per POST to read ``model`` and ``stream``. On one core it answers well over ten times
faster than a Python gateway, so what a benchmark measures through a proxy is the proxy
(``bench/gateway_compare.py`` measures it directly too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

__all__ = ["CONTENT_PIECES", "UpstreamProtocol", "running_in_thread", "serve"]

# The answer, split into the stream's content chunks; the non-streamed answer is their concatenation.
CONTENT_PIECES = ("Hello", " from", " the", " upstream.")
PROMPT_TOKENS = 12
COMPLETION_TOKENS = len(CONTENT_PIECES)
_USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}
_CREATED = int(time.time())
_MAX_HEAD = 64 * 1024


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


_MODEL_CARD = {"id": "bench", "object": "model", "created": _CREATED, "owned_by": "bench"}
_MODELS = _response("200 OK", _json({"object": "list", "data": [_MODEL_CARD]}))
_HEALTH = _response("200 OK", b'{"status":"ok"}')


def _error(message: str) -> bytes:
    return _json(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    )


_NOT_FOUND = _response("404 Not Found", _error("not found"))
_BAD_REQUEST = _response("400 Bad Request", _error("body is not JSON"))
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _sse(payload: dict[str, Any]) -> bytes:
    return _http_chunk(b"data: " + _json(payload) + b"\n\n")


class _Answers:
    """Pre-encoded answers per model name (a client sends a handful of names, so this stays small)."""

    def __init__(self) -> None:
        self._full: dict[str, bytes] = {}
        self._stream: dict[tuple[str, bool], list[bytes]] = {}
        self._n = 0

    def _id(self) -> str:
        self._n += 1
        return f"chatcmpl-bench{self._n}"

    def full(self, model: str) -> bytes:
        answer = self._full.get(model)
        if answer is None:
            body = {
                "id": self._id(),
                "object": "chat.completion",
                "created": _CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(CONTENT_PIECES)},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _USAGE,
            }
            answer = self._full[model] = _response("200 OK", _json(body))
        return answer

    def stream(self, model: str, include_usage: bool) -> list[bytes]:
        """The HTTP head plus the first chunk, then each later chunk, then the terminating chunk."""
        key = (model, include_usage)
        parts = self._stream.get(key)
        if parts is None:
            base = {"id": self._id(), "object": "chat.completion.chunk", "created": _CREATED, "model": model}

            def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {**base, "choices": [choice]}

            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": piece}) for piece in CONTENT_PIECES]
            events.append(chunk({}, "stop"))
            if include_usage:
                events.append({**base, "choices": [], "usage": _USAGE})
            encoded = [_sse(e) for e in events]
            # The role chunk goes out with the head and the first content chunk: what a real server
            # sends as soon as it has its first token.
            parts = [_SSE_HEAD + encoded[0] + encoded[1], *encoded[2:]]
            parts.append(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            self._stream[key] = parts
        return parts


_ANSWERS = _Answers()


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parse requests off a buffer, answer each from memory, keep alive."""

    def __init__(self, chunk_delay: float = 0.0) -> None:
        self.chunk_delay = chunk_delay
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming = False  # a delayed stream is being written: later requests wait in the buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        while self.transport is not None and not self.streaming:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            request_line = lines[0].split(" ")
            length = 0
            close = request_line[-1] == "HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self._answer(request_line[0], request_line[1] if len(request_line) > 1 else "/", body)
            if close and self.transport is not None and not self.streaming:
                self.transport.close()
                return

    def _answer(self, method: str, target: str, body: bytes) -> None:
        assert self.transport is not None
        path = target.split("?", 1)[0]
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            try:
                request = json.loads(body)
            except ValueError:
                self.transport.write(_BAD_REQUEST)
                return
            model = str(request.get("model") or "bench")
            if not request.get("stream"):
                self.transport.write(_ANSWERS.full(model))
                return
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            parts = _ANSWERS.stream(model, include_usage)
            if self.chunk_delay <= 0:
                self.transport.writelines(parts)
                return
            self.streaming = True
            self._write_later(parts, 0)
        elif method == "GET" and path in ("/v1/models", "/models"):
            self.transport.write(_MODELS)
        elif method == "GET" and path == "/health":
            self.transport.write(_HEALTH)
        else:
            self.transport.write(_NOT_FOUND)

    def _write_later(self, parts: list[bytes], i: int) -> None:
        if self.transport is None:
            return
        self.transport.write(parts[i])
        if i + 1 < len(parts):
            asyncio.get_running_loop().call_later(self.chunk_delay, self._write_later, parts, i + 1)
        else:
            self.streaming = False
            self._process()


async def serve(host: str = "127.0.0.1", port: int = 0, chunk_delay: float = 0.0) -> asyncio.Server:
    """Start listening; the caller owns the returned server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: UpstreamProtocol(chunk_delay), host, port, backlog=1024)


@contextmanager
def running_in_thread(host: str = "127.0.0.1", chunk_delay: float = 0.0) -> Iterator[str]:
    """Serve on a free port from a background thread (tests); yield the base URL, e.g. ``http://h:p``."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(serve(host, 0, chunk_delay))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="trivial-upstream", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between streamed chunks")
    args = ap.parse_args()

    async def run() -> None:
        server = await serve(args.host, args.port, args.chunk_delay_ms / 1000)
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on http://{host}:{port}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # optional: a faster event loop where it is installed
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(run())
        else:
            asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
