"""Graceful shutdown: a real ``llmhost serve`` process on loopback, its streams, and SIGTERM/SIGINT.

The first signal drains (``/ready`` 503, ``/health`` 200, new requests 503 with ``Retry-After`` in each
dialect's envelope, running streams go on to their end, then exit 0); streams still running when the
drain time ends are cut; a second signal exits at once. The middleware's bookkeeping is checked
in-process, on a small ASGI app, after the process tests.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Scope

from llmhost.doors.common import ErrorRenderer
from llmhost.doors.http.drain import Drain, DrainMiddleware
from llmhost.doors.ollama.translate import render_error as ollama_render_error
from llmhost.doors.openai.translate import render_error as openai_render_error
from tests.conftest import TINY, make_service, make_settings
from tests.support import cli_env, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
# The tiny model's end-of-text token is ``</s>`` (id 2): banned, so a stream runs to its max_tokens.
NO_EOS = {"2": -100}


# ----- a real `llmhost serve` -------------------------------------------------------------------------
@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


StartServer = Callable[[float], Served]


@pytest.fixture
def serve(tmp_path: Path, tiny_model_path: Path) -> Iterator[StartServer]:
    """Start ``llmhost serve -m tiny --drain-seconds N`` (call it with N) once it answers ``/ready``;
    killed at the end if a test left it running."""
    started: list[Served] = []

    def start(drain_seconds: float) -> Served:
        data = tmp_path / "data"
        make_service(make_settings(data), tiny_model_path).close()  # the tiny model, imported
        port = free_port()
        env = cli_env(
            tmp_path, LLMHOST_ENGINE__N_PARALLEL="20", LLMHOST_ENGINE__N_CTX="4096", LLMHOST_LOG_LEVEL="info"
        )
        log = tmp_path / "serve.log"
        with open(log, "wb") as out:
            command = [sys.executable, "-m", "llmhost", "serve", "-m", TINY, "--port", str(port)]
            command += ["--no-access-log", "--drain-seconds", str(drain_seconds)]
            proc = subprocess.Popen(
                command,
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        served = Served(proc, f"http://127.0.0.1:{port}", log)
        started.append(served)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, served.log_text()
            try:
                if httpx.get(f"{served.base_url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, served.log_text()
            time.sleep(0.05)
        # The first request pays for what is made lazily; paid here, the test's streams start together.
        body = {"model": TINY, "prompt": "hello", "max_tokens": 1}
        assert httpx.post(f"{served.base_url}/v1/completions", json=body, timeout=30).status_code == 200
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(timeout=10)


@dataclass
class Stream:
    """One streamed completion read on its own thread: what came, and when."""

    chunks: int = 0
    done: bool = False  # the closing ``data: [DONE]`` arrived
    error: str | None = None  # how the stream failed, if it did
    last_chunk_at: float = 0.0
    ended_at: float = 0.0
    first: threading.Event = field(default_factory=threading.Event)


def _read_stream(
    base_url: str, max_tokens: int, stream: Stream, start: threading.Barrier | None = None
) -> None:
    body = {"model": TINY, "prompt": "hello", "max_tokens": max_tokens, "stream": True, "logit_bias": NO_EOS}
    try:
        if start is not None:
            start.wait(30)  # every stream asks at once: on a loaded machine, one started late finished last
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    stream.done = True
                elif line.startswith("data: "):
                    stream.chunks += 1
                    stream.last_chunk_at = time.monotonic()
                    stream.first.set()
    except httpx.HTTPError as exc:
        stream.error = type(exc).__name__
    finally:
        stream.ended_at = time.monotonic()
        stream.first.set()  # a stream that never started must not hang the test


def _open_streams(base_url: str, n: int, max_tokens: int) -> tuple[list[Stream], list[threading.Thread]]:
    """``n`` streams, each past its first chunk when this returns."""
    streams = [Stream() for _ in range(n)]
    start = threading.Barrier(n)
    threads = [
        threading.Thread(target=_read_stream, args=(base_url, max_tokens, s, start), daemon=True)
        for s in streams
    ]
    for thread in threads:
        thread.start()
    for s in streams:
        assert s.first.wait(30), "a stream sent no chunk in 30 s"
    assert all(s.error is None and not s.done for s in streams), [
        (s.chunks, s.done, s.error) for s in streams
    ]
    return streams, threads


def _join(threads: list[threading.Thread], timeout: float) -> None:
    end = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"streams still running {timeout} s on"


def test_sigterm_drains_20_live_streams_to_their_end_refuses_new_requests_then_exits_0(
    serve: StartServer,
) -> None:
    drain_seconds = 20.0
    served = serve(drain_seconds)
    base = served.base_url
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/ready").status_code == 200  # a keep-alive connection, from before the signal
        streams, threads = _open_streams(base, 20, max_tokens=800)
        signalled = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)

        ready = client.get("/ready")  # at once, on the connection already open
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        assert ready.json()["error"]["code"] == "shutting_down"
        assert ready.headers["connection"] == "close"  # the client reconnects, through the balancer
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200  # alive: do not kill it

        chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        openai = httpx.post(f"{base}/v1/chat/completions", json=chat, timeout=10)
        assert openai.status_code == 503 and openai.headers["retry-after"] == "1"
        assert openai.json()["error"]["type"] == "server_error"
        assert openai.json()["error"]["code"] == "shutting_down"
        messages = {"model": TINY, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        anthropic = httpx.post(f"{base}/v1/messages", json=messages, timeout=10)
        # Anthropic's status for overloaded_error is 529 (its reference has no 503)
        assert anthropic.status_code == 529 and anthropic.headers["retry-after"] == "1"
        assert anthropic.json()["type"] == "error"
        assert anthropic.json()["error"]["type"] == "overloaded_error"
        ollama = httpx.post(f"{base}/api/chat", json={"model": TINY, "messages": []}, timeout=10)
        assert ollama.status_code == 503 and ollama.headers["retry-after"] == "1"
        assert isinstance(ollama.json()["error"], str) and "shutting down" in ollama.json()["error"]
        assert "x-request-id" in ollama.headers  # refused inside the outer middleware: ids still go out

        _join(threads, drain_seconds)
        rc = served.proc.wait(timeout=drain_seconds)
        exited = time.monotonic()
    log = served.log_text()
    assert rc == 0, log
    assert all(s.done and s.error is None for s in streams), [(s.chunks, s.error) for s in streams]
    # Live through the drain: every stream sent more after the signal than before it.
    assert all(s.last_chunk_at > signalled for s in streams)
    assert exited - signalled < drain_seconds
    assert "draining" in log and "drained: no request running" in log and "Traceback" not in log


def test_streams_running_when_the_drain_time_ends_are_cut_and_the_process_exits_0(serve: StartServer) -> None:
    served = serve(1.0)
    streams, threads = _open_streams(served.base_url, 4, max_tokens=4000)  # about a minute each
    signalled = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    rc = served.proc.wait(timeout=15)
    exited = time.monotonic()
    _join(threads, 10)
    log = served.log_text()
    assert rc == 0, log
    assert 1.0 <= exited - signalled < 6, exited - signalled
    for s in streams:
        assert not s.done and s.error is not None  # the connection dropped before the stream's end
        assert 1.0 <= s.ended_at - signalled < 6
        assert s.last_chunk_at > signalled  # it ran on through the drain until the deadline
    assert "cutting 4 request(s) still running" in log and "Traceback" not in log, log


def test_a_second_signal_exits_at_once(serve: StartServer) -> None:
    served = serve(30.0)
    streams, threads = _open_streams(served.base_url, 2, max_tokens=4000)
    served.proc.send_signal(signal.SIGTERM)
    assert httpx.get(f"{served.base_url}/ready", timeout=10).status_code == 503  # draining
    signalled = time.monotonic()
    served.proc.send_signal(signal.SIGINT)
    rc = served.proc.wait(timeout=15)
    exited = time.monotonic()
    _join(threads, 10)
    assert rc == 128 + signal.SIGINT, served.log_text()
    assert exited - signalled < 5, exited - signalled
    assert all(not s.done and s.error is not None for s in streams)
    log = served.log_text()
    assert "second signal: exiting now, cutting 2 request(s)" in log and "Traceback" not in log, log


# ----- the middleware, in-process -------------------------------------------------------------------
async def _events() -> AsyncIterator[bytes]:
    while True:
        yield b"data: tick\n\n"
        await asyncio.sleep(0.01)


def _small_app(drain: Drain) -> DrainMiddleware:
    async def subscribe(request: Request) -> Response:
        return StreamingResponse(_events(), media_type="text/event-stream")

    async def work(request: Request) -> Response:
        await asyncio.sleep(0.05)
        return Response(b"done")

    app = Starlette(routes=[Route("/events", subscribe), Route("/api/work", work, methods=["POST"])])
    renderers: dict[str, ErrorRenderer] = {"": openai_render_error, "/api": ollama_render_error}
    return DrainMiddleware(app, drain=drain, renderers=renderers)


async def _call(app: DrainMiddleware, method: str, path: str, disconnect: asyncio.Event) -> list[Message]:
    """One request through the ASGI app; the client goes away once ``disconnect`` is set."""
    sent: list[Message] = []
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},  # uvicorn's: disconnects come by receive()
        "http_version": "1.1",
        "method": method,
        "path": path,
        "headers": [],
        "query_string": b"",
    }
    bodies = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:
        message = next(bodies, None)
        if message is not None:
            return message
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_event_subscriptions_do_not_hold_the_drain_and_refusals_use_the_paths_envelope() -> None:
    async def scenario() -> None:
        drain = Drain(30)
        app = _small_app(drain)
        gone = asyncio.Event()
        subscription = asyncio.create_task(_call(app, "GET", "/events", gone))
        await asyncio.sleep(0.05)
        assert drain.in_flight == 0  # streaming, but a subscription: not work in progress
        work = asyncio.create_task(_call(app, "POST", "/api/work", gone))
        await asyncio.sleep(0)
        assert drain.in_flight == 1
        drain.begin()
        assert not drain.done  # the work still runs
        refused = await _call(app, "POST", "/api/work", gone)
        start = refused[0]
        assert start["status"] == 503
        headers = dict(start["headers"])
        assert headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
        assert b'"error":"the server is shutting down' in refused[1]["body"]  # Ollama's envelope on /api
        answered = await work
        assert dict(answered[0]["headers"])[b"connection"] == b"close"  # it started during the drain
        assert drain.in_flight == 0 and drain.done
        gone.set()
        await subscription

    asyncio.run(scenario())


def test_drain_time_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        Drain(-1)
    with pytest.raises(ValueError, match="0 or more"):
        Drain(float("nan"))
