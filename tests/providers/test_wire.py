"""The upstream HTTP client (our pool, llhttp's framing), against a loopback server that writes exact bytes.

Each test's server (``fault_server.raw_server``) reads one request head at a time and answers with the
bytes the test chose, so framing (Content-Length, chunked, read-until-close), keep-alive reuse, caps and
broken connections are exercised as a real peer would produce them. The provider-level view of the same
failures (which :class:`~llmhost.errors.ProviderError` each becomes) is in ``test_http.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from llmhost.net import ssl_context
from llmhost.providers.wire import (
    BodyTooLarge,
    ConnectError,
    ConnectTimeout,
    Headers,
    ReadError,
    RemoteProtocolError,
    WireClient,
)
from tests.providers.fault_server import raw_server, replying

pytestmark = pytest.mark.anyio


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
        with pytest.raises(RemoteProtocolError, match="malformed response: Expected HTTP/"):
            await client.request("GET", "/")
        await client.aclose()


async def test_body_cut_short_is_a_read_error() -> None:
    async def short(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        return False

    async with raw_server(short) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        with pytest.raises(ReadError, match="closed before the end of the body"):
            await client.request("GET", "/")
        response = await client.send("GET", "/")
        with pytest.raises(ReadError, match="closed before the end of the body"):
            _ = [part async for part in response.aiter_bytes()]
        await client.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    async with raw_server(ok) as server:
        port = server.port
    client = WireClient(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectError) as caught:
        await client.request("GET", "/")
    await client.aclose()
    assert not isinstance(caught.value, ConnectTimeout)


async def test_connect_phase_has_its_own_timeout() -> None:
    async with raw_server(ok) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}", connect_timeout=1e-9)
        with pytest.raises(ConnectTimeout, match="connect timeout"):
            await client.request("GET", "/")
        await client.aclose()


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
        monkeypatch.setenv("HTTPS_PROXY", f"http://user:pw@127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        client = WireClient("https://api.example.com/v1")
        with pytest.raises(ConnectError, match=r"proxy refused the tunnel: HTTP/1\.1 403 Forbidden"):
            await client.request("GET", "/models")
        await client.aclose()
    assert proxy.requests[0].startswith(b"CONNECT api.example.com:443 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic dXNlcjpwdw==\r\n" in proxy.requests[0]


def test_headers_that_could_split_the_request_are_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        WireClient("http://127.0.0.1:1", headers={"X-Key": "a\r\nX-Evil: 1"})
    with pytest.raises(ValueError, match="not an http"):
        WireClient("ftp://127.0.0.1:1")


# -- framing that RFC 9112 forbids, and the caps -------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nx", "Invalid character in Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", "Duplicate Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nNo colon\r\nContent-Length: 1\r\n\r\nx", "Invalid header token"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxYZ0\r\n\r\n", "after chunk data"),
    ],
    ids=["negative length", "repeated length", "hex-prefixed chunk", "header without colon", "chunk overrun"],
)
async def test_forbidden_framing_is_a_protocol_error_naming_the_parsers_reason(
    answer: bytes, reason: str
) -> None:
    async with raw_server(replying(answer)) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        with pytest.raises(RemoteProtocolError, match=f"malformed response: .*{reason}"):
            await client.request("GET", "/")
        await client.aclose()


async def test_a_bad_chunk_size_in_the_middle_of_a_body_fails_the_reader_instead_of_hanging() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    async with raw_server(replying(head, b"-5\r\nxxxxx\r\n", keep_open=5)) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        response = await client.send("GET", "/")
        parts = response.aiter_bytes()
        assert await parts.__anext__() == b"first"
        async with asyncio.timeout(2):
            with pytest.raises(ReadError, match="Invalid character in chunk size"):
                await parts.__anext__()
        await client.aclose()


async def test_a_body_over_the_cap_is_refused_declared_or_chunked() -> None:
    declared = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"4\r\nabcd\r\n" * 3 + b"0\r\n\r\n"
    for answer in (declared, chunked):
        async with raw_server(replying(answer)) as server:
            client = WireClient(f"http://127.0.0.1:{server.port}", max_body=10)
            with pytest.raises(BodyTooLarge, match="larger than 10 bytes"):
                await client.request("GET", "/")
            await client.aclose()
    async with raw_server(replying(declared)) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}", max_body=11)  # the cap itself is fine
        assert (await client.request("GET", "/"))[1] == b"hello world"
        await client.aclose()


async def test_a_stream_line_over_the_cap_is_refused_whether_terminated_or_not() -> None:
    for body in (b"short\n" + b"x" * 11 + b"\n", b"short\n" + b"x" * 11):
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        async with raw_server(replying(answer)) as server:
            client = WireClient(f"http://127.0.0.1:{server.port}", max_line=10)
            response = await client.send("GET", "/")
            lines = response.aiter_lines()
            assert await lines.__anext__() == "short"
            with pytest.raises(BodyTooLarge, match="line longer than 10 bytes"):
                await lines.__anext__()
            await response.aclose()
            await client.aclose()


async def test_a_long_line_arriving_in_many_pieces_is_joined_once() -> None:
    pieces = [b"data: "] + [b"x" * 1000] * 50 + [b"\n\n"]

    async def trickle(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async with raw_server(trickle) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        response = await client.send("GET", "/")
        lines = [line async for line in response.aiter_lines()]
        await client.aclose()
    assert lines == ["data: " + "x" * 50_000, ""]


# -- proxies ---------------------------------------------------------------------------------------------


def _only_proxy(monkeypatch: pytest.MonkeyPatch, **proxies: str) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, url in proxies.items():
        monkeypatch.setenv(name, url)


async def test_an_https_proxy_is_spoken_to_over_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    async with raw_server(replying(b"HTTP/1.1 200 Connection established\r\n\r\n")) as proxy:
        _only_proxy(monkeypatch, HTTPS_PROXY=f"https://user:pw@127.0.0.1:{proxy.port}")
        client = WireClient("https://api.example.com/v1", connect_timeout=2)
        with pytest.raises(ConnectError):  # this proxy speaks no TLS: the handshake fails
            await client.request("GET", "/models")
        await client.aclose()
    assert proxy.first_bytes == [b"\x16"] and proxy.requests == []


def test_a_proxy_of_another_kind_is_refused_not_spoken_to_as_http(monkeypatch: pytest.MonkeyPatch) -> None:
    _only_proxy(monkeypatch, HTTPS_PROXY="socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match="socks5:// proxy is not supported"):
        WireClient("https://api.example.com/v1")


def _certificates(folder: Path) -> None:
    """A test CA and two certificates it signs: ``localhost`` (the proxy) and ``upstream.test``."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA")
    for name, san in (("proxy", "DNS:localhost"), ("upstream", "DNS:upstream.test")):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
        )  # fmt: skip


def _tls(folder: Path, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / f"{name}.pem", folder / f"{name}.key")
    return context


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for test certificates")
async def test_https_through_an_https_proxy_is_tls_to_the_proxy_then_tls_through_the_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _certificates(tmp_path)
    seen: list[bytes] = []
    handlers: list[asyncio.Task[None]] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer(b'{"ok": true}', "Connection: close"))
        await writer.drain()
        writer.close()

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", up_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    up_listener = await asyncio.start_server(upstream, "127.0.0.1", 0, ssl=_tls(tmp_path, "upstream"))
    up_port = up_listener.sockets[0].getsockname()[1]
    proxy_listener = await asyncio.start_server(proxy, "127.0.0.1", 0, ssl=_tls(tmp_path, "proxy"))
    proxy_port = proxy_listener.sockets[0].getsockname()[1]
    _only_proxy(monkeypatch, HTTPS_PROXY=f"https://user:pw@localhost:{proxy_port}")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    ssl_context.cache_clear()  # trust the test CA (the cached context predates it) ...
    try:
        client = WireClient(f"https://upstream.test:{up_port}/v1")
        response, body = await client.request("GET", "/models")
        await client.aclose()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)
    finally:
        ssl_context.cache_clear()  # ... and only here: the next one is built as the environment says
        up_listener.close()
        proxy_listener.close()
    assert (response.status_code, body) == (200, b'{"ok": true}')
    connect, request = seen
    assert connect.startswith(f"CONNECT upstream.test:{up_port} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic dXNlcjpwdw==\r\n" in connect
    assert request.startswith(b"GET /v1/models HTTP/1.1\r\n") and b"Proxy-Authorization" not in request


async def test_head_requests_are_refused_since_llhttp_cannot_be_told_they_have_no_body() -> None:
    client = WireClient("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="HEAD"):
        await client.send("HEAD", "/")
    await client.aclose()


async def test_bytes_after_a_complete_answer_leave_it_whole_and_retire_the_connection() -> None:
    unasked = b"HTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 5\r\n\r\nextra"

    async def twice(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"mine") + unasked)
        return True

    async with raw_server(twice) as server:
        client = WireClient(f"http://127.0.0.1:{server.port}")
        for _ in range(2):
            response, body = await client.request("GET", "/")
            assert (body, response.headers.get("x-injected")) == (b"mine", None)
        await client.aclose()
    assert server.connections == 2
