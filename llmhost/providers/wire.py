"""A lean HTTP/1.1 client on asyncio streams: the gateway's connection pool to one upstream.

Why not httpx: profiling the gateway showed 61-66% of its CPU inside httpx's pool bookkeeping and request
building, for a job that is one keep-alive connection per in-flight request to one origin. This client
does just that job: ``send`` takes an idle pooled connection (or opens one, through the system proxy when
one applies), writes the request in one ``write``, reads the status line and headers, and hands back a
:class:`Response` whose body is read (``aread``) or streamed (``aiter_bytes``/``aiter_lines``) by the
caller. Content-Length, chunked and read-until-close bodies are understood; 1xx interim answers are
skipped. A connection goes back to the pool only when its body was read to the end and neither side
asked to close; a cancelled or abandoned exchange closes it, so no stale bytes ever reach the next request.

Only the connect phase has a timeout here. First-token and total deadlines belong to the caller
(``asyncio.timeout`` around each wait, see ``providers/http.py``); cancellation at any await is safe.

Exceptions::

    WireError                   anything that went wrong on the wire
    ├── ConnectError            no connection (refused, unreachable, DNS, TLS, proxy refused the tunnel)
    │   └── ConnectTimeout      the connect phase ran past its limit
    ├── RemoteProtocolError     the peer closed before answering, or answered something that is not HTTP/1.x
    └── ReadError               the connection broke while the body was being read
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import http
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from llmhost.net import proxy_for, ssl_context

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "Headers",
    "ReadError",
    "RemoteProtocolError",
    "Response",
    "WireClient",
    "WireError",
    "reason_phrase",
]

_READ_SIZE = 64 * 1024
_MAX_HEAD = 64 * 1024  # status line + headers; asyncio's stream limit
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class WireError(Exception):
    """A failure on the wire; see the module doc for the tree."""


class ConnectError(WireError):
    """No connection could be made."""


class ConnectTimeout(ConnectError):
    """The connect phase ran past its limit."""


class RemoteProtocolError(WireError):
    """The peer closed before answering, or its answer is not valid HTTP/1.x."""


class ReadError(WireError):
    """The connection broke while a body was being read."""


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` (``""`` when it has none)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class Headers(dict[str, str]):
    """Response headers by lower-case name; a repeated header's values are joined with ``", "``."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Whether an idle connection may carry another request: open, silent, not too old."""
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader._buffer  # type: ignore[attr-defined]  # unsolicited bytes: not reusable
            and now - self.idle_since < expiry
        )

    def close(self) -> None:
        self.writer.close()


class Response:
    """One answer: status and headers are read; the body is the caller's to read or stream, then close.

    Reading the body to its end (or :meth:`aclose`) gives the connection back to the pool, or closes it
    when it cannot carry another request.
    """

    __slots__ = ("_client", "_conn", "_keep_alive", "_mode", "_remaining", "headers", "status_code")

    def __init__(
        self,
        client: WireClient,
        conn: _Connection,
        status: int,
        headers: Headers,
        *,
        mode: str,
        length: int,
        keep_alive: bool,
    ) -> None:
        self._client = client
        self._conn: _Connection | None = conn
        self.status_code = status
        self.headers = headers
        self._mode = mode  # "length" | "chunked" | "close"
        self._remaining = length  # bytes left of a "length" body, or of the current chunk
        self._keep_alive = keep_alive
        if mode == "length" and length == 0:
            self._release()

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aread(self) -> bytes:
        """The whole body."""
        if self._mode == "length" and self._conn is not None:
            try:
                data = await self._conn.reader.readexactly(self._remaining)
            except (asyncio.IncompleteReadError, OSError) as exc:
                self._abandon()
                raise ReadError(f"connection closed during the body: {_describe(exc)}") from None
            except BaseException:
                self._abandon()
                raise
            self._remaining = 0
            self._release()
            return data
        return b"".join([part async for part in self.aiter_bytes()])

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive (chunked framing removed)."""
        try:
            while self._conn is not None:
                part = await self._next_part()
                if part:
                    yield part
        finally:
            if self._conn is not None:  # the consumer stopped early: the rest of the body is unread
                self._abandon()

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body as text lines, split at ``\\r\\n``, ``\\n`` or ``\\r`` (the SSE line rule), UTF-8."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        async for part in self.aiter_bytes():
            text = pending + decoder.decode(part)
            if not text:
                continue
            lines = _LINE_BREAK.split(text)
            pending = lines.pop()  # the unterminated rest
            if text.endswith("\r"):  # possibly the first half of "\r\n": decide with the next piece
                pending = lines.pop() + "\r"
            for line in lines:
                yield line
        pending += decoder.decode(b"", final=True)
        if pending:
            lines = _LINE_BREAK.split(pending)
            if not lines[-1]:
                lines.pop()
            for line in lines:
                yield line

    async def aclose(self) -> None:
        """Done with this answer: an unread body closes the connection."""
        if self._conn is not None:
            self._abandon()

    async def _next_part(self) -> bytes:
        conn = self._conn
        assert conn is not None
        reader = conn.reader
        try:
            if self._mode == "length":
                part = await reader.read(min(self._remaining, _READ_SIZE))
                if not part:
                    raise ReadError(f"connection closed with {self._remaining} body bytes unread")
                self._remaining -= len(part)
                if self._remaining == 0:
                    self._release()
                return part
            if self._mode == "close":
                part = await reader.read(_READ_SIZE)
                if not part:
                    self._release()
                return part
            if self._remaining == 0:  # chunked: at a chunk boundary
                line = await reader.readuntil(b"\r\n")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise RemoteProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailer fields: ignored
                    self._release()
                    return b""
                self._remaining = size
            part = await reader.read(min(self._remaining, _READ_SIZE))
            if not part:
                raise ReadError("connection closed inside a chunk")
            self._remaining -= len(part)
            if self._remaining == 0 and await reader.readexactly(2) != b"\r\n":
                raise RemoteProtocolError("chunk not followed by CRLF")
            return part
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            self._abandon()
            raise ReadError(f"connection broke during the body: {_describe(exc)}") from None
        except BaseException:
            self._abandon()
            raise

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._checkin(conn, reusable=self._keep_alive and self._mode != "close")

    def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._checkin(conn, reusable=False)


class WireClient:
    """A keep-alive pool of HTTP/1.1 connections to the origin of ``base_url``.

    ``base_url`` may carry a path prefix (``http://host/v1``): request paths are joined to it; an
    absolute URL on the same origin is sent as it is.
    ``headers`` go on every request. At most ``max_connections`` exchanges are in flight; more wait.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        max_connections: int = 64,
        keepalive_expiry: float = 30.0,
    ) -> None:
        parts = urlsplit(base_url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if default_port else f"{host}:{self.port}"
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self._proxy = proxy_for(scheme, self.host)
        fixed = {"Host": self.authority, "Accept": "*/*", "User-Agent": "llmhost"}
        for name, value in (headers or {}).items():
            fixed = {k: v for k, v in fixed.items() if k.lower() != name.lower()}
            fixed[name] = value
        if self._proxy is not None and scheme == "http":
            fixed.update(self._proxy.headers)
        if any(any(c in f"{k}{v}" for c in "\r\n\0") for k, v in fixed.items()):
            raise ValueError("header names and values must not contain CR, LF or NUL")
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    # -- public ----------------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> tuple[Response, bytes]:
        """Send a request and read its whole answer: ``(response, body)``."""
        response = await self.send(method, path, content, params)
        try:
            return response, await response.aread()
        finally:
            await response.aclose()

    async def send(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Response:
        """Send a request and return its answer with the body unread; the caller must close it."""
        if self._closed:
            raise ConnectError("client is closed")
        target = self._target(path, params)
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed_headers}"
        if content is not None or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(content or b'')}\r\n"
        message = (head + "\r\n").encode("latin-1") + (content or b"")
        await self._slots.acquire()
        conn: _Connection | None = None
        try:
            conn = await self._checkout()
            conn.writer.write(message)
            await conn.writer.drain()
            response = await self._read_head(conn, method)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            self._slots.release()
            if isinstance(exc, (ConnectionError, OSError)):
                raise RemoteProtocolError(f"connection broke before an answer: {_describe(exc)}") from None
            raise
        return response

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.popleft().close()

    # -- internals -------------------------------------------------------------------------------------

    def same_origin(self, url: str) -> bool:
        """Whether an absolute ``url`` points at this pool's origin (scheme, host and port)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        return (scheme, (parts.hostname or "").lower(), port) == (self.scheme, self.host.lower(), self.port)

    def _target(self, path: str, params: Mapping[str, Any] | None) -> str:
        if "://" in path:  # an absolute URL on this origin: its own path, without the base prefix
            if not self.same_origin(path):
                raise ValueError(f"{path!r} is not on this client's origin")
            parts = urlsplit(path)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        else:
            target = self.prefix + (path if path.startswith("/") else f"/{path}")
        if params:
            target += ("&" if "?" in target else "?") + urlencode(
                {k: v for k, v in params.items() if v is not None}, doseq=True
            )
        if self._proxy is not None and self.scheme == "http":
            target = f"http://{self.authority}{target}"  # absolute form, for the proxy
        return target

    async def _checkout(self) -> _Connection:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()  # most recently used first: the likeliest to still be open
            if conn.usable(now, self.keepalive_expiry):
                return conn
            conn.close()
        return await self._connect()

    def _checkin(self, conn: _Connection, *, reusable: bool) -> None:
        self._slots.release()
        if reusable and not self._closed and not conn.writer.is_closing():
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self) -> _Connection:
        proxy = self._proxy
        host, port = (proxy.host, proxy.port) if proxy is not None else (self.host, self.port)
        tls = self.scheme == "https"
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is not None and tls:
                    reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEAD)
                    await self._tunnel(reader, writer, proxy.headers)
                    await writer.start_tls(ssl_context(), server_hostname=self.host)
                else:
                    reader, writer = await asyncio.open_connection(
                        host,
                        port,
                        ssl=ssl_context() if tls else None,
                        server_hostname=self.host if tls else None,
                        limit=_MAX_HEAD,
                    )
        except TimeoutError:
            raise ConnectTimeout(f"connect timeout ({self.connect_timeout:g}s)") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(_describe(exc)) from None
        return _Connection(reader, writer)

    async def _tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: Mapping[str, str]
    ) -> None:
        where = f"{self.host}:{self.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n{extra}\r\n".encode("latin-1"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise ConnectError(f"proxy closed the tunnel request: {_describe(exc)}") from None
        status = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"200":
            writer.close()
            answer = head.split(b"\r\n", 1)[0].decode("latin-1")
            raise ConnectError(f"proxy refused the tunnel: {answer}")

    async def _read_head(self, conn: _Connection, method: str) -> Response:
        reader = conn.reader
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise RemoteProtocolError("server disconnected without sending a response") from None
                raise RemoteProtocolError("server disconnected in the middle of its response head") from None
            except asyncio.LimitOverrunError:
                raise RemoteProtocolError(f"response head larger than {_MAX_HEAD} bytes") from None
            lines = head[:-4].decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise RemoteProtocolError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
            status = int(code)
            headers = Headers()
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise RemoteProtocolError(f"malformed header line {line[:60]!r}")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            break
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            mode, length = "length", 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            mode, length = "chunked", 0
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"].split(",")[0])
            except ValueError:
                raise RemoteProtocolError("malformed Content-Length") from None
            mode = "length"
        else:
            mode, length = "close", 0
        return Response(self, conn, status, headers, mode=mode, length=length, keep_alive=keep_alive)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"connection closed after {len(exc.partial)} of {exc.expected} bytes"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
