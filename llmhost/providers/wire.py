"""The gateway's HTTP/1.1 client to one upstream: a lean keep-alive pool that frames with llhttp
(the framing, errors and :class:`Response` are in :mod:`llmhost.providers.wire_framing`).

Why our own pool: the job is one keep-alive connection per in-flight request to one origin, and the
well-kept clients cost the gateway a measured share of its speed. Profiling showed 61-66% of its CPU
inside httpx's pool bookkeeping and request building; aiohttp's client (under the same interface,
``bench/transport_ab.py``) served 9-22% fewer non-streamed requests/s at concurrency 16 (median of
per-round ratios in three runs: 0.81, 0.91, 0.78) for 7-24% more CPU per request, and added 14-29% to
the p50 latency at concurrency 1 (results in ``bench/results/transport-ab-2026-12-02*.md``).

Why not our own parser: the answer's framing (status line, headers, ``Content-Length``, chunked
encoding) is parsed by llhttp, Node.js's parser, through ``httptools`` (the binding uvicorn uses), with
none of its leniencies on. So a ``Content-Length`` of ``-1``, ``+5`` or ``1_0``, repeated or listed
lengths, a length beside ``Transfer-Encoding: chunked``, a chunk size like ``-5`` or ``0x10``, a
header line without a colon are errors (:class:`RemoteProtocolError` or, mid-body, :class:`ReadError`),
never a guess at the body.

``send`` takes an idle pooled connection (or opens one, through the system proxy when one applies:
TLS to an ``https://`` proxy, ``CONNECT`` for an ``https`` target), writes the request in one ``write``,
reads the status and headers, and hands back a :class:`Response` whose body is read (``aread``, at most
``max_body`` bytes) or streamed (``aiter_bytes``, or ``aiter_lines`` with lines of at most ``max_line``
bytes) by the caller. 1xx interim answers are skipped. A connection goes back to the pool only when its
answer was read to the end, nothing followed it, and neither side asked to close; a cancelled or
abandoned exchange closes it, so no stale bytes ever reach the next request.

Only the connect phase has a timeout here. First-token and total deadlines belong to the caller
(``asyncio.timeout`` around each wait, see ``providers/http.py``); cancellation at any await is safe.

Exceptions::

    WireError                   anything that went wrong on the wire
    ├── ConnectError            no connection (refused, unreachable, DNS, TLS, proxy refused the tunnel)
    │   └── ConnectTimeout      the connect phase ran past its limit
    ├── RemoteProtocolError     the peer closed before answering, or answered something that is not HTTP/1.x
    │   └── BodyTooLarge        the answer (or one line of a streamed answer) is over the client's cap
    └── ReadError               the connection broke, or the framing broke, while the body was being read
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from llmhost.net import Proxy, proxy_for, ssl_context
from llmhost.providers.wire_framing import (
    MAX_BODY_BYTES,
    MAX_HEAD,
    MAX_LINE_BYTES,
    READ_SIZE,
    BodyTooLarge,
    ConnectError,
    Connection,
    ConnectTimeout,
    Headers,
    ReadError,
    RemoteProtocolError,
    Response,
    WireError,
    describe_error,
    reason_phrase,
    size_text,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LINE_BYTES",
    "BodyTooLarge",
    "ConnectError",
    "ConnectTimeout",
    "Headers",
    "ReadError",
    "RemoteProtocolError",
    "Response",
    "WireClient",
    "WireError",
    "reason_phrase",
    "size_text",
]


class WireClient:
    """A keep-alive pool of HTTP/1.1 connections to the origin of ``base_url``.

    ``base_url`` may carry a path prefix (``http://host/v1``): request paths are joined to it; an
    absolute URL on the same origin is sent as it is. ``headers`` go on every request. At most
    ``max_connections`` exchanges are in flight; more wait. ``max_body`` caps a body read whole,
    ``max_line`` a line of a streamed one.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        max_connections: int = 64,
        keepalive_expiry: float = 30.0,
        max_body: int = MAX_BODY_BYTES,
        max_line: int = MAX_LINE_BYTES,
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
        self.max_body = max_body
        self.max_line = max_line
        self._proxy = proxy_for(scheme, self.host)
        self._proxy_tls = self._proxy is not None and _proxy_scheme(scheme) == "https"
        fixed = {"Host": self.authority, "Accept": "*/*", "User-Agent": "llmhost"}
        for name, value in (headers or {}).items():
            fixed = {k: v for k, v in fixed.items() if k.lower() != name.lower()}
            fixed[name] = value
        if self._proxy is not None and scheme == "http":
            fixed.update(self._proxy.headers)
        if any(any(c in f"{k}{v}" for c in "\r\n\0") for k, v in fixed.items()):
            raise ValueError("header names and values must not contain CR, LF or NUL")
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: collections.deque[Connection] = collections.deque()
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
        """Send a request and return its answer with the body unread; the caller must close it.

        ``HEAD`` is refused: llhttp, as httptools drives it, cannot be told that a HEAD answer has no body.
        """
        if self._closed:
            raise ConnectError("client is closed")
        if method == "HEAD":
            raise ValueError("HEAD requests are not supported")
        target = self._target(path, params)
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed_headers}"
        if content is not None or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(content or b'')}\r\n"
        message = (head + "\r\n").encode("latin-1") + (content or b"")
        await self._slots.acquire()
        conn: Connection | None = None
        try:
            conn = await self._checkout()
            conn.expect_answer()
            conn.writer.write(message)
            await conn.writer.drain()
            await self._read_head(conn)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            self._slots.release()
            if isinstance(exc, (ConnectionError, OSError)):
                raise RemoteProtocolError(
                    f"connection broke before an answer: {describe_error(exc)}"
                ) from None
            raise
        return Response(self, conn)

    def same_origin(self, url: str) -> bool:
        """Whether an absolute ``url`` points at this pool's origin (scheme, host and port)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        return (scheme, (parts.hostname or "").lower(), port) == (self.scheme, self.host.lower(), self.port)

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.popleft().close()

    # -- internals -------------------------------------------------------------------------------------

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

    async def _checkout(self) -> Connection:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()  # most recently used first: the likeliest to still be open
            if conn.usable(now, self.keepalive_expiry):
                return conn
            conn.close()
        return await self._connect()

    def checkin(self, conn: Connection, *, reusable: bool) -> None:
        self._slots.release()
        if reusable and not conn.spoiled and not self._closed and not conn.writer.is_closing():
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self) -> Connection:
        proxy = self._proxy
        tls = self.scheme == "https"
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is not None:
                    reader, writer = await asyncio.open_connection(
                        proxy.host,
                        proxy.port,
                        ssl=ssl_context() if self._proxy_tls else None,
                        server_hostname=proxy.host if self._proxy_tls else None,
                    )
                    if tls:
                        await self._tunnel(reader, writer, proxy)
                        await writer.start_tls(ssl_context(), server_hostname=self.host)
                else:
                    reader, writer = await asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=ssl_context() if tls else None,
                        server_hostname=self.host if tls else None,
                    )
        except TimeoutError:
            raise ConnectTimeout(f"connect timeout ({self.connect_timeout:g}s)") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(describe_error(exc)) from None
        return Connection(reader, writer)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: Proxy) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{host}:{self.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in proxy.headers.items())
        writer.write(f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n{extra}\r\n".encode("latin-1"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")  # a 2xx to CONNECT has no body: the tunnel follows
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise ConnectError(f"proxy closed the tunnel request: {describe_error(exc)}") from None
        status = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or status[1] != b"200":
            writer.close()
            answer = head.split(b"\r\n", 1)[0].decode("latin-1")
            raise ConnectError(f"proxy refused the tunnel: {answer}")

    async def _read_head(self, conn: Connection) -> None:
        while not conn.head_done:
            data = await conn.reader.read(READ_SIZE)
            if not data:
                if not conn.head_size:
                    raise RemoteProtocolError("server disconnected without sending a response")
                raise RemoteProtocolError("server disconnected in the middle of its response head")
            conn.head_size += len(data)
            conn.feed(data)
            if not conn.head_done and conn.head_size > MAX_HEAD:
                raise RemoteProtocolError(f"response head larger than {size_text(MAX_HEAD)}")


def _proxy_scheme(scheme: str) -> str:
    """The scheme of the proxy URL configured for ``scheme`` targets: ``https`` means TLS to the proxy.

    :func:`llmhost.net.proxy_for` decides whether a proxy applies; this only says how to reach it. Any
    kind other than ``http``/``https`` (``socks5://`` ...) is refused rather than spoken to as HTTP.
    """
    proxies = urllib.request.getproxies()
    configured = proxies.get(scheme) or proxies.get("all") or ""
    kind = configured.split("://", 1)[0].lower() if "://" in configured else "http"
    if kind not in ("http", "https"):
        raise ValueError(f"a {kind}:// proxy is not supported (only http:// and https:// proxies)")
    return kind
