"""The shared pieces: timeouts, SSE parsing, the stream decoders' deltas and how upstream errors are read."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from llmhost.core.types import Delta, Usage
from llmhost.errors import ConfigError, ProviderConnectionError, ProviderStreamError
from llmhost.providers.anthropic import anthropic_sse_deltas
from llmhost.providers.http import (
    Timeouts,
    UpstreamClient,
    UpstreamReportedError,
    iter_sse,
    status_for_error_type,
)
from llmhost.providers.ollama import ollama_deltas
from llmhost.providers.openai_compat import openai_sse_deltas
from llmhost.providers.wire import MAX_BODY_BYTES, MAX_LINE_BYTES
from tests.providers.conftest import MakeProvider
from tests.providers.fault_server import raw_server, replying

pytestmark = pytest.mark.anyio


async def lines(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def collect(chunks: AsyncIterator[Any]) -> list[Any]:
    return [c async for c in chunks]


def test_timeouts_have_the_documented_defaults_and_must_be_positive() -> None:
    assert Timeouts() == Timeouts(connect=5, first_token=60, total=600)
    with pytest.raises(ConfigError, match="first_token"):
        Timeouts(first_token=0)


async def test_sse_parsing_follows_the_event_stream_rules() -> None:
    events = await collect(
        iter_sse(
            lines(
                ": a comment",
                "event: message_start",
                'data: {"a":',
                "data:1}",
                "id: 7",
                "",
                "",  # a blank line with no data dispatches nothing
                "data: plain",
                "",
                "data: cut off before its blank line",
            )
        )
    )
    assert events == [("message_start", '{"a":\n1}'), ("message", "plain")]


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return "data: " + json.dumps(
        {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    )


async def test_openai_decoder_yields_nothing_for_the_role_chunk() -> None:
    role = openai_chunk({"role": "assistant", "content": ""})
    decoder = openai_sse_deltas(lines(role, "", openai_chunk({"content": "a"}), "", "data: [DONE]", ""))
    assert await decoder.__anext__() == Delta(0, "a")  # the first delta is the first token
    assert await collect(decoder) == [Delta(-1, usage=Usage())]  # no usage chunk: zeros
    # a stream with nothing but the role chunk has only its (empty) usage to give
    assert await collect(openai_sse_deltas(lines(role, "", "data: [DONE]", ""))) == [Delta(-1, usage=Usage())]


async def test_openai_decoder_reports_in_band_errors_with_the_status_their_type_means() -> None:
    error = 'data: {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}'
    with pytest.raises(UpstreamReportedError) as info:
        await collect(openai_sse_deltas(lines(error, "")))
    assert info.value.status == 429 and "slow down" in info.value.message


async def test_openai_decoder_treats_a_missing_done_as_a_broken_stream() -> None:
    with pytest.raises(UpstreamReportedError, match="DONE"):
        await collect(openai_sse_deltas(lines(openai_chunk({"content": "a"}), "")))


async def test_openai_decoder_maps_finish_reasons_and_reads_cached_tokens() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}
    stream = [
        openai_chunk({"content": "a"}, "content_filter"),
        "",
        'data: {"choices": [], "usage": ' + json.dumps(usage) + "}",
        "",
        "data: [DONE]",
        "",
    ]
    got = await collect(openai_sse_deltas(lines(*stream)))
    assert got == [Delta(0, "a"), Delta(0, finish_reason="stop"), Delta(-1, usage=Usage(9, 2, 4))]


async def test_anthropic_decoder_skips_pings_thinking_and_unknown_events() -> None:
    stream = [
        'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_1", "model": "c",'
        ' "usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "output_tokens": 1}}}',
        'event: ping\ndata: {"type": "ping"}',
        'event: something_new\ndata: {"type": "something_new", "x": 1}',
        'event: content_block_start\ndata: {"type": "content_block_start", "index": 0,'
        ' "content_block": {"type": "thinking", "thinking": ""}}',
        'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,'
        ' "delta": {"type": "thinking_delta", "thinking": "hmm"}}',
        'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 1,'
        ' "delta": {"type": "text_delta", "text": "Hi"}}',
        'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},'
        ' "usage": {"output_tokens": 9}}',
        'event: message_stop\ndata: {"type": "message_stop"}',
    ]
    text = "\n\n".join(stream) + "\n\n"
    got = await collect(anthropic_sse_deltas(lines(*text.split("\n"))))
    assert got == [
        Delta(0, "Hi"),
        Delta(0, finish_reason="length"),
        Delta(-1, usage=Usage(prompt_tokens=7, completion_tokens=9, cached_tokens=2)),
    ]


async def test_anthropic_decoder_needs_message_stop() -> None:
    start = 'data: {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {}}}'
    with pytest.raises(UpstreamReportedError, match="message_stop"):
        await collect(anthropic_sse_deltas(lines("event: message_start", start, "")))


async def test_ollama_decoder_needs_the_done_line() -> None:
    line = '{"model": "m", "message": {"role": "assistant", "content": "a"}, "done": false}'
    with pytest.raises(UpstreamReportedError, match="done"):
        await collect(ollama_deltas(lines(line)))


def test_error_types_map_to_statuses() -> None:
    assert status_for_error_type("overloaded_error") == 529
    assert status_for_error_type("invalid_request_error") == 400
    assert status_for_error_type(503) == 503
    assert status_for_error_type("mystery") == 502


async def test_retry_after_may_be_seconds_milliseconds_or_a_date(make_provider: MakeProvider) -> None:
    client = make_provider(UpstreamClient, "p", "http://127.0.0.1:1", headers={}, timeouts=Timeouts())
    seconds = client.status_error(429, httpx.Headers({"retry-after": "3"}), b"")
    assert seconds.retry_after == 3.0
    millis = client.status_error(429, httpx.Headers({"retry-after-ms": "250"}), b"")
    assert millis.retry_after == 0.25
    dated = client.status_error(429, httpx.Headers({"retry-after": formatdate(usegmt=True)}), b"")
    assert dated.retry_after is not None and dated.retry_after <= 1
    assert client.status_error(503, httpx.Headers({}), b"").retry_after is None


# -- framing: a malformed or oversized answer is a clean provider error --------------------------------

_JSON = b'{"id": "x"}'  # what a lenient parser would hand back as a good answer (11 bytes)
_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
_LENGTH_AND_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nTransfer-Encoding: chunked\r\n\r\n"

# Each answer parses as a good JSON answer if its length is read leniently (int() accepts "+11" and "1_1",
# a joined "11, 5" splits to 11, int(x, 16) accepts "0xb") and is an error under RFC 9112's grammar.
MALFORMED = {
    "negative length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n" + _JSON,
    "signed length": b"HTTP/1.1 200 OK\r\nContent-Length: +11\r\n\r\n" + _JSON,
    "underscored length": b"HTTP/1.1 200 OK\r\nContent-Length: 1_1\r\n\r\n" + _JSON,
    "conflicting lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Length: 5\r\n\r\n" + _JSON,
    "length list": b"HTTP/1.1 200 OK\r\nContent-Length: 11, 5\r\n\r\n" + _JSON,
    "length and chunked": _LENGTH_AND_CHUNKED + b"b\r\n" + _JSON + b"\r\n0\r\n\r\n",
    "negative chunk size": _CHUNKED + b"-5\r\n" + _JSON + b"\r\n0\r\n\r\n",
    "hex-prefixed chunk size": _CHUNKED + b"0xb\r\n" + _JSON + b"\r\n0\r\n\r\n",
    "signed chunk size": _CHUNKED + b"+b\r\n" + _JSON + b"\r\n0\r\n\r\n",
}


@pytest.fixture
def upstream(make_provider: MakeProvider) -> Callable[[int], UpstreamClient]:
    """``upstream(port)``: a client for ``http://127.0.0.1:port/v1``, total timeout 5 s, closed at the end."""

    def make(port: int) -> UpstreamClient:
        url = f"http://127.0.0.1:{port}/v1"
        return make_provider(UpstreamClient, "up", url, headers={}, timeouts=Timeouts(total=5))

    return make


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_framing_is_a_provider_error(
    answer: bytes, upstream: Callable[[int], UpstreamClient]
) -> None:
    async with raw_server(replying(answer)) as server:
        client = upstream(server.port)
        with pytest.raises(ProviderConnectionError, match="malformed"):
            await client.request_json("POST", "/chat/completions", {})


async def test_a_malformed_chunk_after_the_stream_started_breaks_the_stream(
    upstream: Callable[[int], UpstreamClient],
) -> None:
    first = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
    answer = (_CHUNKED + f"{len(first):x}\r\n".encode() + first + b"\r\n", b"0x10\r\n" + b"x" * 16)
    async with raw_server(replying(*answer, keep_open=5)) as server:
        client = upstream(server.port)
        deltas = client.stream("/chat/completions", {}, openai_sse_deltas)
        assert (await deltas.__anext__()).text == "a"
        with pytest.raises(ProviderStreamError, match="chunk size"):
            await deltas.__anext__()


async def test_an_answer_declared_larger_than_the_body_cap_is_refused_at_once(
    upstream: Callable[[int], UpstreamClient],
) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    async with raw_server(replying(head + b"{", keep_open=10)) as server:
        client = upstream(server.port)
        with pytest.raises(ProviderConnectionError, match="larger than 64 MiB"):
            await client.request_json("POST", "/chat/completions", {})


async def test_a_chunked_answer_growing_past_the_body_cap_is_refused(
    upstream: Callable[[int], UpstreamClient],
) -> None:
    piece = b"x" * (1 << 20)
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)

    async def endless(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_CHUNKED)
        with contextlib.suppress(ConnectionError):
            for _ in range(MAX_BODY_BYTES // len(piece) + 8):
                writer.write(chunk)
                await writer.drain()
        return False

    async with raw_server(endless) as server:
        client = upstream(server.port)
        with pytest.raises(ProviderConnectionError, match="larger than 64 MiB"):
            await client.request_json("POST", "/chat/completions", {})


async def test_a_stream_line_longer_than_the_line_cap_is_refused(
    upstream: Callable[[int], UpstreamClient],
) -> None:
    # An SSE comment (ignored by the event parser) longer than the cap, then a good stream.
    comment = b": " + b"x" * MAX_LINE_BYTES + b"\n\n"
    good = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: [DONE]\n\n'
    body = comment + good
    answer = _CHUNKED + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    async with raw_server(replying(answer)) as server:
        client = upstream(server.port)
        with pytest.raises(ProviderConnectionError, match="line longer than 16 MiB"):
            await collect(client.stream("/chat/completions", {}, openai_sse_deltas))


async def test_an_sse_event_larger_than_the_line_cap_is_refused() -> None:
    line = "data: " + "x" * (1 << 20)  # 1 MiB lines, never a blank line to end the event
    with pytest.raises(UpstreamReportedError, match="event larger than 16 MiB"):
        await collect(iter_sse(lines(*[line] * (MAX_LINE_BYTES // (1 << 20) + 1))))


# -- an https:// proxy is spoken to over TLS ----------------------------------------------------------


@pytest.mark.parametrize("target", ["https://api.example.com/v1", "http://api.example.com/v1"])
async def test_an_https_proxy_gets_a_tls_handshake_never_plaintext(
    target: str, monkeypatch: pytest.MonkeyPatch, make_provider: MakeProvider
) -> None:
    async with raw_server(replying(b"HTTP/1.1 200 Connection established\r\n\r\n")) as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.lower(), raising=False)
        monkeypatch.setenv("HTTPS_PROXY", f"https://user:pw@127.0.0.1:{proxy.port}")
        monkeypatch.setenv("HTTP_PROXY", f"https://user:pw@127.0.0.1:{proxy.port}")
        client = make_provider(
            UpstreamClient, "up", target, headers={}, timeouts=Timeouts(connect=2, total=5)
        )
        with pytest.raises(ProviderConnectionError):
            await client.request_json("GET", "/models")
    assert proxy.first_bytes and all(first == b"\x16" for first in proxy.first_bytes)
    assert proxy.requests == []  # nothing, credentials least of all, went in the clear
