"""A fault-injecting HTTP/1.1 server on a loopback port, for testing how providers fail.

It is raw asyncio rather than an ASGI app so that it controls every byte and every stall exactly, and
so a stalled handler never holds up shutdown. Whatever the path, it answers the OpenAI way: a
``chat.completion`` JSON object, or (when the request body has ``"stream": true``) an SSE stream of a
role chunk, ``chunks`` content chunks ``tok0``, ``tok1``..., a finish chunk, a usage chunk and
``[DONE]``. A test sets :attr:`FaultServer.fault` to bend that: stall before the headers or before the
first chunk, answer an error status, stall or cut the connection after some chunks.
``closed_port()`` gives a port with nothing listening, and ``full_backlog()`` one whose connects hang.
``raw_server()`` is a plainer one in the test's own loop, for framing: it writes the exact bytes a
test chooses (malformed lengths and chunk sizes, oversized bodies) and records what it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support import free_port

__all__ = [
    "Fault",
    "FaultServer",
    "RawServer",
    "Recorded",
    "closed_port",
    "full_backlog",
    "raw_server",
    "replying",
]


@dataclass
class Fault:
    """How the server answers. The defaults answer correctly and at once."""

    status: int = 200
    error: dict[str, Any] | None = None  # JSON body of an error answer (status != 200)
    raw_error: bytes | None = None  # or a raw body (content-type text/plain)
    answer: dict[str, Any] | None = None  # replaces the chat.completion of a plain 200 answer
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers, e.g. Retry-After
    stall_before_headers: float = 0.0
    stall_before_first_chunk: float = 0.0  # streams: after the headers and the role chunk
    chunks: int = 3
    cut_after: int | None = None  # streams: drop the connection after this many content chunks
    stall_after: int | None = None  # streams: stall ``mid_stream_stall`` s after this many content chunks
    mid_stream_stall: float = 30.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [choice],
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = (data if isinstance(data, str) else json.dumps(data)).encode()
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)  # one HTTP/1.1 chunk per event


def _reason(status: int) -> str:
    return {200: "OK", 400: "Bad Request", 401: "Unauthorized", 429: "Too Many Requests"}.get(status, "Error")


class FaultServer:
    """Serve in a background thread with its own event loop; ``fault`` may be swapped between requests."""

    def __init__(self) -> None:
        self.fault = Fault()
        self.requests: list[Recorded] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._started = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultServer:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fault server did not start")
        return self

    def stop(self) -> None:
        """Stop serving (new connections are refused); stopping again does nothing."""
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def reset(self, fault: Fault | None = None) -> None:
        self.fault = fault or Fault()
        self.requests.clear()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        async with server:
            await self._stopping.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)
            }
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            self.requests.append(Recorded(method, path, headers, body))
            await self._answer(writer, self.fault, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _answer(self, writer: asyncio.StreamWriter, fault: Fault, body: bytes) -> None:
        await asyncio.sleep(fault.stall_before_headers)
        extra = "".join(f"{k}: {v}\r\n" for k, v in fault.headers.items())
        try:
            stream = bool(json.loads(body).get("stream")) if body else False
        except ValueError:
            stream = False
        if fault.status != 200 or not stream:
            if fault.status != 200:
                payload = fault.error
            elif fault.answer is not None:
                payload = fault.answer
            else:
                payload = {
                    "id": "chatcmpl-fault",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            content = json.dumps(payload).encode() if payload is not None else b""
            kind = "application/json"
            if fault.status != 200 and fault.raw_error is not None:
                content, kind = fault.raw_error, "text/plain"
            writer.write(
                f"HTTP/1.1 {fault.status} {_reason(fault.status)}\r\ncontent-type: {kind}\r\n"
                f"content-length: {len(content)}\r\nconnection: close\r\n{extra}\r\n".encode()
                + content
            )
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            b"connection: close\r\n" + extra.encode() + b"\r\n"
        )
        writer.write(_sse(_chunk({"role": "assistant", "content": ""})))
        await writer.drain()
        await asyncio.sleep(fault.stall_before_first_chunk)
        for i in range(fault.chunks):
            if fault.cut_after == i:
                return  # closed without the terminating zero-length chunk: a cut stream
            if fault.stall_after == i:
                await asyncio.sleep(fault.mid_stream_stall)
            writer.write(_sse(_chunk({"content": f"tok{i}"})))
            await writer.drain()
        writer.write(_sse(_chunk({}, "stop")))
        usage = {"prompt_tokens": 1, "completion_tokens": fault.chunks, "total_tokens": 1 + fault.chunks}
        writer.write(_sse({**_chunk({}), "choices": [], "usage": usage}))
        writer.write(_sse("[DONE]") + b"0\r\n\r\n")
        await writer.drain()


def closed_port() -> int:
    """A loopback port with nothing listening: connecting to it is refused."""
    return free_port()  # free a moment ago, and nothing here listens on it


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A loopback port whose listen queue is full and never accepted: a connect to it hangs (Linux)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):  # more than the queue holds; the extra connects stay pending
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]


class RawServer:
    """A loopback server in the test's own event loop that writes exactly the bytes a test chooses.

    It reads one request (head, and a ``Content-Length`` body) at a time and calls
    ``handler(head, body, writer)``, which answers and returns False to hang up. ``connections`` counts
    accepted connections, ``requests`` holds every request as received, and ``first_bytes`` the first
    bytes of each connection, so a test can tell a TLS handshake (``0x16``) from plain HTTP.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.first_bytes: list[bytes] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            first = await reader.read(1)
            self.first_bytes.append(first)
            if first in (b"", b"\x16"):  # closed, or a TLS ClientHello: this server speaks plain HTTP
                return
            while True:
                try:
                    head = first + await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                first = b""
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                if not await self.handler(head, body, writer):
                    return
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    """Serve ``handler`` on a free loopback port for the duration of the block."""
    server = RawServer(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def replying(*answers: bytes, keep_open: float = 0.0) -> Handler:
    """A handler that writes ``answers`` in turn (with a short pause between them, so each arrives in
    its own read), then keeps the connection open ``keep_open`` seconds and hangs up."""

    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        for i, part in enumerate(answers):
            if i:
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(part)
        await writer.drain()
        await asyncio.sleep(keep_open)
        return False

    return handler
