"""The wire client's framing: its errors, one connection's llhttp parser and the :class:`Response`
whose body is read whole or streamed; :mod:`llmhost.providers.wire` holds the pool that uses them.

llhttp (Node.js's parser, through ``httptools``) frames every answer with none of its leniencies on, so
a malformed ``Content-Length``, chunk size or header line is an error, never a guess at the body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

import httptools

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEAD",
    "MAX_LINE_BYTES",
    "READ_SIZE",
    "BodyTooLarge",
    "ConnectError",
    "ConnectTimeout",
    "Connection",
    "Headers",
    "Pool",
    "ReadError",
    "RemoteProtocolError",
    "Response",
    "WireError",
    "describe_error",
    "reason_phrase",
    "size_text",
]

MAX_BODY_BYTES = 64 << 20  # a non-streamed answer; chat answers are kilobytes, embeddings a few MB
MAX_LINE_BYTES = 16 << 20  # one line of a streamed answer (and one SSE event, see providers/http.py)
READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024  # status line + headers
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class WireError(Exception):
    """A failure on the wire; see the module doc for the tree."""


class ConnectError(WireError):
    """No connection could be made."""


class ConnectTimeout(ConnectError):
    """The connect phase ran past its limit."""


class RemoteProtocolError(WireError):
    """The peer closed before answering, or its answer is not valid HTTP/1.x."""


class BodyTooLarge(RemoteProtocolError):
    """The answer, or one line of a streamed answer, is larger than the client accepts."""


class ReadError(WireError):
    """The connection broke, or its framing turned out malformed, while a body was being read."""


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` (``""`` when it has none)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def size_text(size: int) -> str:
    """``64 MiB`` for a cap's size in messages."""
    return f"{size / (1 << 20):g} MiB" if size >= 1 << 20 else f"{size} bytes"


class Headers(dict[str, str]):
    """Response headers by lower-case name; a repeated header's values are joined with ``", "``."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Connection:
    """One connection and its llhttp parser, which stays with it across keep-alive exchanges.

    The parser's callbacks fill in the current answer: its headers, body pieces not yet handed out, and
    whether its head and its whole message are complete. ``spoiled`` marks bytes the connection must
    not be reused after (anything following a complete answer, a parse error).
    """

    __slots__ = (
        "complete",
        "head_done",
        "head_size",
        "headers",
        "idle_since",
        "keep_alive",
        "parser",
        "parts",
        "reader",
        "spoiled",
        "status",
        "writer",
    )

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.parser = httptools.HttpResponseParser(self)
        self.spoiled = False
        self.status = 0
        self.headers = Headers()
        self.parts: collections.deque[bytes] = collections.deque()
        self.head_done = False
        self.head_size = 0
        self.keep_alive = False
        self.complete = True  # no answer expected yet: anything arriving now is unsolicited

    def usable(self, now: float, expiry: float) -> bool:
        """Whether an idle connection may carry another request: open, silent, not too old."""
        return (
            not self.spoiled
            and not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader._buffer  # type: ignore[attr-defined]  # unsolicited bytes: not reusable
            and now - self.idle_since < expiry
        )

    def expect_answer(self) -> None:
        self.status, self.headers, self.head_done, self.head_size = 0, Headers(), False, 0
        self.parts.clear()
        self.complete = False

    def feed(self, data: bytes) -> None:
        """Parse ``data``; a framing error of the current answer is raised as ``RemoteProtocolError``."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.spoiled = True
            raise RemoteProtocolError(
                "server switched protocols (HTTP 101), which was not asked for"
            ) from None
        except httptools.HttpParserError as exc:
            self.spoiled = True
            if not self.complete:  # bytes after a complete answer only spoil the connection
                raise RemoteProtocolError(f"malformed response: {exc}") from None

    # -- llhttp's callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer (pipelined or unsolicited) behind the one we asked for
            self.spoiled = True

    # After ``complete`` the callbacks belong to bytes behind our answer: they leave it as it is.

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self.headers = Headers()
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is done
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.parts.append(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    def close(self) -> None:
        self.writer.close()


class Pool(Protocol):
    """What a :class:`Response` needs of the pool it came from (:class:`~llmhost.providers.wire.WireClient`):
    its body caps, and to take its connection back when the answer is done."""

    max_body: int
    max_line: int

    def checkin(self, conn: Connection, *, reusable: bool) -> None: ...


class Response:
    """One answer: status and headers are read; the body is the caller's to read or stream, then close.

    Reading the body to its end (or :meth:`aclose` after it) gives the connection back to the pool, or
    closes it when it cannot carry another request; an answer closed with its body unread closes it.
    """

    __slots__ = ("_client", "_conn", "_keep_alive", "_until_close", "headers", "status_code")

    def __init__(self, client: Pool, conn: Connection) -> None:
        self._client = client
        self._conn: Connection | None = conn
        self.status_code = conn.status
        self.headers = conn.headers
        self._keep_alive = conn.keep_alive
        # No length and not chunked: llhttp reads to the end of the connection (it cannot tell us so).
        self._until_close = (
            "content-length" not in conn.headers
            and "transfer-encoding" not in conn.headers
            and conn.status not in (204, 304)
        )
        if conn.complete and not conn.parts:
            self._release()

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aread(self) -> bytes:
        """The whole body; :class:`BodyTooLarge` past the client's ``max_body``."""
        limit = self._client.max_body
        declared = self.headers.get("content-length")  # llhttp let through only one, all digits
        if declared is not None and self._conn is not None and int(declared) > limit:
            self._abandon()
            raise BodyTooLarge(f"response body larger than {size_text(limit)} ({declared} bytes)")
        parts: list[bytes] = []
        size = 0
        while self._conn is not None:
            part = await self._next_part()
            size += len(part)
            if size > limit:
                self._abandon()
                raise BodyTooLarge(f"response body larger than {size_text(limit)}")
            parts.append(part)
        return b"".join(parts)

    async def aiter_bytes(self) -> AsyncGenerator[bytes, None]:
        """The body in pieces as they arrive (chunked framing removed); a stream has no total cap."""
        try:
            while self._conn is not None:
                part = await self._next_part()
                if part:
                    yield part
        finally:
            if self._conn is not None:  # the consumer stopped early: the rest of the body is unread
                self._abandon()

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body as text lines, split at ``\\r\\n``, ``\\n`` or ``\\r`` (the SSE line rule), UTF-8.

        A line longer than the client's ``max_line`` is :class:`BodyTooLarge`. Bytes are split before
        decoding: no UTF-8 sequence contains a CR or LF byte.
        """
        limit = self._client.max_line
        too_long = f"a line longer than {size_text(limit)} in the stream"
        pending: list[bytes] = []  # the unterminated rest, in pieces (a long line is joined once)
        pending_size = 0
        async with contextlib.aclosing(self.aiter_bytes()) as parts:
            async for part in parts:
                if b"\n" not in part and b"\r" not in part:
                    pending.append(part)
                    pending_size += len(part)
                    if pending_size > limit:
                        self._abandon()
                        raise BodyTooLarge(too_long)
                    continue
                data = b"".join((*pending, part)) if pending else part
                lines = _LINE_BREAK.split(data)
                rest = lines.pop()
                if data.endswith(b"\r"):  # possibly the first half of "\r\n": decide with the next piece
                    rest = lines.pop() + b"\r"
                pending, pending_size = ([rest], len(rest)) if rest else ([], 0)
                for line in lines:
                    if len(line) > limit:
                        self._abandon()
                        raise BodyTooLarge(too_long)
                    yield line.decode("utf-8", "replace")
        if pending:
            lines = _LINE_BREAK.split(b"".join(pending))
            if not lines[-1]:
                lines.pop()
            for line in lines:
                if len(line) > limit:
                    raise BodyTooLarge(too_long)
                yield line.decode("utf-8", "replace")

    async def aclose(self) -> None:
        """Done with this answer: an unread body closes the connection."""
        if self._conn is not None:
            self._abandon()

    async def _next_part(self) -> bytes:
        """The next body piece; ``b""`` once the body is complete (the connection is then released)."""
        conn = self._conn
        assert conn is not None
        try:
            while True:
                if conn.parts:
                    part = conn.parts.popleft()
                    if conn.complete and not conn.parts:
                        self._release()
                    return part
                if conn.complete:
                    self._release()
                    return b""
                data = await conn.reader.read(READ_SIZE)
                if not data:
                    if self._until_close:
                        self._keep_alive = False
                        self._release()
                        return b""
                    raise ReadError("connection closed before the end of the body")
                try:
                    conn.feed(data)
                except RemoteProtocolError as exc:
                    raise ReadError(
                        f"malformed body: {str(exc).removeprefix('malformed response: ')}"
                    ) from None
        except (OSError, ReadError) as exc:
            self._abandon()
            if isinstance(exc, ReadError):
                raise
            raise ReadError(f"connection broke during the body: {describe_error(exc)}") from None
        except BaseException:
            self._abandon()
            raise

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client.checkin(conn, reusable=self._keep_alive and not self._until_close)

    def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client.checkin(conn, reusable=False)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"connection closed after {len(exc.partial)} of {exc.expected} bytes"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
