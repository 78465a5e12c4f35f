"""The lean HTTP/1.1 client, against a loopback server that writes exact bytes.

Each test's server is a plain ``asyncio`` socket server whose handler reads one request head at a time
and answers with the bytes the test chose, so framing (Content-Length, chunked, read-until-close),
keep-alive reuse and broken connections are exercised as a real peer would produce them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from llmhost.providers.wire import (
    ConnectError,
    ConnectTimeout,
    Headers,
    ReadError,
    RemoteProtocolError,
    WireClient,
)

pytestmark = pytest.mark.anyio

Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]


class RawServer:
    """Counts connections and requests; ``handler(head, body, writer)`` answers, returns False to hang up."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                if not await self.handler(head, body, writer):
                    return
                await writer.drain()
        finally:
            writer.close()


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    server = RawServer(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def answer(body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


async def ok(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(b'{"ok": true}'))
    return True


async def test_keep_alive_reuses_one_connection_for_sequential_requests() -> None:
    async with raw_server(ok) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        for _ in range(5):
            response, body = await client.request("POST", "/x", b"{}")
            assert (response.status_code, body) == (200, b'{"ok": true}')
        await client.aclose()
    assert server.connections == 1
    assert len(server.requests) == 5


async def test_request_line_carries_prefix_params_default_headers_and_length() -> None:
    async with raw_server(ok) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}/v1/", headers={"Authorization": "Bearer k"})
        await client.request("GET", "/models", params={"a": "b c", "skip": None})
        await client.request("POST", "chat", b'{"m": 1}')
        await client.aclose()
    get, post = server.requests
    assert get.startswith(b"GET /v1/models?a=b+c HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in get
    assert b"Authorization: Bearer k\r\n" in get and b"Content-Length" not in get
    assert post.startswith(b"POST /v1/chat HTTP/1.1\r\n")
    assert post.endswith(b'Content-Length: 8\r\n\r\n{"m": 1}')


async def test_chunked_body_with_extensions_and_trailers_is_decoded_and_connection_reused() -> None:
    async def chunked(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        return True

    async with raw_server(chunked) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        for _ in range(2):
            _, body = await client.request("GET", "/")
            assert body == b"hello, world"
        await client.aclose()
    assert server.connections == 1


async def test_lines_split_at_every_sse_line_break_even_across_pieces() -> None:
    pieces = [b"data: a\r", b"\ndata: b\r", b"data: c\n", b"\n", b"data: \xc3", b"\xa9\r\n\r\n", b"tail"]

    async def sse(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)  # separate reads on the client side
        writer.write(b"0\r\n\r\n")
        return True

    async with raw_server(sse) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        response = await client.send("POST", "/", b"{}")
        lines = [line async for line in response.aiter_lines()]
        await response.aclose()
        await client.aclose()
    assert lines == ["data: a", "data: b", "data: c", "", "data: é", "", "tail"]


async def test_body_read_until_close_is_complete_and_connection_not_reused() -> None:
    async def until_close(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        return False

    async with raw_server(until_close) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        for _ in range(2):
            _, body = await client.request("GET", "/")
            assert body == b"all of it"
        await client.aclose()
    assert server.connections == 2


async def test_connection_close_header_and_http_1_0_are_not_reused() -> None:
    http_1_0 = b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"
    replies = [answer(b"a", "Connection: close"), http_1_0, answer(b"c")]

    async def varied(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(replies.pop(0))
        return True

    async with raw_server(varied) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        assert [(await client.request("GET", "/"))[1] for _ in range(3)] == [b"a", b"b", b"c"]
        await client.aclose()
    assert server.connections == 3


async def test_idle_connection_closed_by_the_server_is_replaced_without_an_error() -> None:
    async def once(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"x"))
        return False  # the server hangs up after every answer, without saying Connection: close

    async with raw_server(once) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        for _ in range(3):
            assert (await client.request("GET", "/"))[1] == b"x"
            await asyncio.sleep(0.05)  # let the FIN arrive while the connection is idle
        await client.aclose()
    assert server.connections == 3


async def test_interim_100_continue_is_skipped() -> None:
    async def continue_first(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"final"))
        return True

    async with raw_server(continue_first) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        response, body = await client.request("POST", "/", b"{}")
        await client.aclose()
    assert (response.status_code, body) == (200, b"final")


async def test_repeated_headers_are_joined_and_names_are_case_insensitive() -> None:
    async def many(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"", "X-A: 1", "x-a: 2", "Retry-After: 3"))
        return True

    async with raw_server(many) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        response, _ = await client.request("GET", "/")
        await client.aclose()
    assert isinstance(response.headers, Headers)
    assert response.headers.get("X-A") == "1, 2"
    assert response.headers.get("RETRY-AFTER") == "3"


async def test_server_that_hangs_up_without_answering_is_a_protocol_error() -> None:
    async def hang_up(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async with raw_server(hang_up) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        with pytest.raises(RemoteProtocolError, match="without sending a response"):
            await client.request("GET", "/")
        await client.aclose()


async def test_garbage_instead_of_http_is_a_protocol_error() -> None:
    async def garbage(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return True

    async with raw_server(garbage) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        with pytest.raises(RemoteProtocolError, match=r"not an HTTP/1\.x response"):
            await client.request("GET", "/")
        await client.aclose()


async def test_body_cut_short_is_a_read_error() -> None:
    async def short(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        return False

    async with raw_server(short) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        with pytest.raises(ReadError):
            await client.request("GET", "/")
        response = await client.send("GET", "/")
        with pytest.raises(ReadError, match="unread"):
            _ = [part async for part in response.aiter_bytes()]
        await client.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    async with raw_server(ok) as server:
        port = server.port
    client = WireClient(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectError) as caught:
        await client.request("GET", "/")
    assert not isinstance(caught.value, ConnectTimeout)


async def test_connect_phase_has_its_own_timeout() -> None:
    async with raw_server(ok) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}", connect_timeout=1e-9)
        with pytest.raises(ConnectTimeout, match="connect timeout"):
            await client.request("GET", "/")


async def test_abandoned_stream_closes_its_connection_so_no_stale_bytes_reach_the_next_request() -> None:
    async def slow_then_fast(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"/slow" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            return True
        writer.write(answer(b"fresh"))
        return True

    async with raw_server(slow_then_fast) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        response = await client.send("GET", "/slow")
        parts = response.aiter_bytes()
        assert await parts.__anext__() == b"first"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await parts.__anext__()
        await response.aclose()
        assert (await client.request("GET", "/fast"))[1] == b"fresh"
        await client.aclose()
    assert server.connections == 2


async def test_max_connections_makes_extra_requests_wait_for_a_free_connection() -> None:
    in_flight = 0
    most = 0

    async def slow(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        writer.write(answer(b"x"))
        return True

    async with raw_server(slow) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}", max_connections=2)
        bodies = await asyncio.gather(*(client.request("GET", "/") for _ in range(6)))
        await client.aclose()
    assert [body for _, body in bodies] == [b"x"] * 6
    assert most == 2 and server.connections == 2


async def test_plain_http_through_a_proxy_uses_the_absolute_form(monkeypatch: pytest.MonkeyPatch) -> None:
    async with raw_server(ok) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://user:pw@127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        client = WireClient("http://upstream.example:8000/v1")
        await client.request("GET", "/models")
        await client.aclose()
    (sent,) = proxy.requests
    assert sent.startswith(b"GET http://upstream.example:8000/v1/models HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic dXNlcjpwdw==\r\n" in sent


async def test_https_through_a_proxy_that_refuses_the_tunnel_is_a_connect_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        return False

    async with raw_server(refuse) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        client = WireClient("https://api.example.com/v1")
        with pytest.raises(ConnectError, match=r"proxy refused the tunnel: HTTP/1\.1 403 Forbidden"):
            await client.request("GET", "/models")
        await client.aclose()
    assert proxy.requests[0].startswith(b"CONNECT api.example.com:443 HTTP/1.1\r\n")


def test_headers_that_could_split_the_request_are_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        WireClient("http://127.0.0.1:1", headers={"X-Key": "a\r\nX-Evil: 1"})
    with pytest.raises(ValueError, match="not an http"):
        WireClient("ftp://127.0.0.1:1")
