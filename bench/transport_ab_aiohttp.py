"""The aiohttp variant of ``llmhost/providers/wire.py``, for ``bench/transport_ab.py`` only.

``transport_ab.py --aiohttp`` copies this file over ``llmhost/providers/wire.py`` in a snapshot of the
tree: it has the same names (``WireClient``, the ``WireError`` tree, the caps) over aiohttp's client
(``ClientSession``, llhttp's parser), so the gateway can be measured with either client and nothing
else changed. It is the adapter that was measured against our own pool when choosing between them:
aiohttp's pool and parser, our in-flight limit, caps, proxy settings, exception tree and SSE line rule.
It needs ``aiohttp`` installed (``pip install 'aiohttp>=3.11,<4'``); llmhost itself does not.

One aiohttp 3.14 behaviour it works around: a parse error met in the middle of a body (a bad chunk
size after the first chunks) closes the connection without telling the body's reader, which then
waits forever; the adapter watches the connection's close and fails the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import re
import ssl
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import yarl

from llmhost.net import proxy_for, ssl_context

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LINE_BYTES",
    "BodyTooLarge",
    "ConnectError",
    "ConnectTimeout",
    "ReadError",
    "RemoteProtocolError",
    "Response",
    "WireClient",
    "WireError",
    "reason_phrase",
    "size_text",
]

MAX_BODY_BYTES = 64 << 20  # a non-streamed answer; chat answers are kilobytes, embeddings a few MB
MAX_LINE_BYTES = 16 << 20  # one line of a streamed answer (and one SSE event, see providers/http.py)
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_URL_CACHE = 64  # request URLs kept parsed (a provider uses a handful of paths)


class WireError(Exception):
    """A failure on the wire."""


class ConnectError(WireError):
    """No connection could be made."""


class ConnectTimeout(ConnectError):
    """The connect phase ran past its limit."""


class RemoteProtocolError(WireError):
    """The peer closed before answering, or its answer is not valid HTTP/1.x."""


class BodyTooLarge(RemoteProtocolError):
    """The answer, or one line of a streamed answer, is larger than the client accepts."""


class ReadError(WireError):
    """The connection broke (or the framing turned out malformed) while a body was being read."""


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` (``""`` when it has none)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def size_text(size: int) -> str:
    """``64 MiB`` for a cap's size in messages."""
    return f"{size / (1 << 20):g} MiB" if size >= 1 << 20 else f"{size} bytes"


class Response:
    """One answer: status and headers are read; the body is the caller's to read or stream, then close.

    Reading the body to its end (or :meth:`aclose` after it) gives the connection back to the pool; an
    answer closed with body unread closes its connection.
    """

    __slots__ = ("_client", "_closed", "_open", "_raw", "headers", "status_code")

    def __init__(self, client: WireClient, raw: aiohttp.ClientResponse) -> None:
        self._client = client
        self._raw = raw
        self._open = True
        self.status_code: int = raw.status
        self.headers: Mapping[str, str] = raw.headers  # case-insensitive names
        # aiohttp 3.14 drops a parse error met in the middle of a body (a bad chunk size after the first
        # chunks): it closes the connection but never tells the body's reader, which then waits forever.
        # Watching the connection's close turns that into the read error it is.
        self._closed: asyncio.Future[None] | None = None
        connection = raw.connection
        protocol = connection.protocol if connection is not None else None
        if protocol is not None and not raw.content.is_eof():
            self._closed = protocol.closed
            if self._closed is not None:
                self._closed.add_done_callback(self._connection_closed)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aread(self) -> bytes:
        """The whole body; :class:`BodyTooLarge` past the client's ``max_body``."""
        raw, limit = self._raw, self._client.max_body
        try:
            declared = raw.content_length
            if declared is not None:  # llhttp stops at the declared length, so read() is bounded
                if declared > limit:
                    raise BodyTooLarge(f"response body larger than {size_text(limit)} ({declared} bytes)")
                data = await raw.read()
            else:
                parts: list[bytes] = []
                size = 0
                async for part in raw.content.iter_any():
                    size += len(part)
                    if size > limit:
                        raise BodyTooLarge(f"response body larger than {size_text(limit)}")
                    parts.append(part)
                data = b"".join(parts)
        except WireError:
            self._abandon()
            raise
        except (aiohttp.ClientError, OSError) as exc:
            self._abandon()
            raise _read_error(exc) from None
        except BaseException:
            self._abandon()
            raise
        self._finish()
        return data

    async def aiter_bytes(self) -> AsyncGenerator[bytes, None]:
        """The body in pieces as they arrive (chunked framing removed); a stream has no total cap."""
        try:
            async for part in self._raw.content.iter_any():
                yield part
        except (aiohttp.ClientError, OSError) as exc:
            self._abandon()
            raise _read_error(exc) from None
        except BaseException:  # the consumer stopped early (GeneratorExit), or was cancelled
            self._abandon()
            raise
        self._finish()

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body as text lines, split at ``\\r\\n``, ``\\n`` or ``\\r`` (the SSE line rule), UTF-8.

        A line longer than the client's ``max_line`` is :class:`BodyTooLarge`. Bytes are split before
        decoding: no UTF-8 sequence contains a CR or LF byte.
        """
        limit = self._client.max_line
        pending: list[bytes] = []  # the unterminated rest, in pieces (a long line is joined once)
        pending_size = 0
        async with contextlib.aclosing(self.aiter_bytes()) as parts:
            async for part in parts:
                if b"\n" not in part and b"\r" not in part:
                    pending.append(part)
                    pending_size += len(part)
                    if pending_size > limit:
                        self._abandon()
                        raise BodyTooLarge(f"a line longer than {size_text(limit)} in the stream")
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
                        raise BodyTooLarge(f"a line longer than {size_text(limit)} in the stream")
                    yield line.decode("utf-8", "replace")
        if pending:
            lines = _LINE_BREAK.split(b"".join(pending))
            if not lines[-1]:
                lines.pop()
            for line in lines:
                if len(line) > limit:
                    raise BodyTooLarge(f"a line longer than {size_text(limit)} in the stream")
                yield line.decode("utf-8", "replace")

    async def aclose(self) -> None:
        """Done with this answer: a body read to its end keeps the connection, an unread one closes it."""
        if self._open:
            if self._raw.content.at_eof():
                self._finish()
            else:
                self._abandon()

    def _finish(self) -> None:
        if self._open:
            self._open = False
            self._unwatch()
            self._raw.release()
            self._client._slots.release()

    def _abandon(self) -> None:
        if self._open:
            self._open = False
            self._unwatch()
            self._raw.close()
            self._client._slots.release()

    def _unwatch(self) -> None:
        if self._closed is not None:
            self._closed.remove_done_callback(self._connection_closed)
            self._closed = None

    def _connection_closed(self, closed: asyncio.Future[None]) -> None:
        """The connection closed under an unfinished body that was told nothing: fail the body's reader
        with the parser's reason (kept on the protocol). Runs after aiohttp's own ``connection_lost``, so
        a body it did fail (cut short, bad length) is left as it is."""
        content = self._raw.content
        if not self._open or content.is_eof() or content.exception() is not None:
            return
        connection = self._raw.connection
        protocol = connection.protocol if connection is not None else None
        cause = protocol.exception() if protocol is not None else None
        detail = _first_line(getattr(cause, "message", "") or str(cause or "")) if cause else "closed"
        error = aiohttp.ClientPayloadError(f"connection closed in the body: {detail}")
        if cause is not None:
            content.set_exception(error, cause)
        else:
            content.set_exception(error)


class WireClient:
    """A keep-alive pool of HTTP/1.1 connections to the origin of ``base_url``.

    ``base_url`` may carry a path prefix (``http://host/v1``): request paths are joined to it; an
    absolute URL on the same origin is sent as it is. ``headers`` go on every request. At most
    ``max_connections`` exchanges are in flight; more wait. Bodies are sent as given, with no
    ``Content-Type`` of the client's own (the caller's headers say what they are), and answers are taken
    as sent (no ``Accept-Encoding``, no decompression), so the caps count the bytes on the wire.
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
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._origin = f"{scheme}://{host}:{self.port}"
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self.max_body = max_body
        self.max_line = max_line
        fixed = {"Accept": "*/*", "User-Agent": "llmhost"}
        for name, value in (headers or {}).items():
            fixed = {k: v for k, v in fixed.items() if k.lower() != name.lower()}
            fixed[name] = value
        self._proxy, self._proxy_headers = _proxy(scheme, self.host)
        if self._proxy is not None and scheme == "http":
            # A plain request goes to the proxy as it is (absolute form): its credentials travel on it.
            # aiohttp puts ``proxy_headers`` on a CONNECT only, which is what an https target gets.
            fixed.update(self._proxy_headers)
            self._proxy_headers = {}
        if any(any(c in f"{k}{v}" for c in "\r\n\0") for k, v in fixed.items()):
            raise ValueError("header names and values must not contain CR, LF or NUL")
        self._headers = fixed
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[str, yarl.URL] = {}
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
        url = self._url(path, params)
        session = self._session_here()
        await self._slots.acquire()
        try:
            raw = await session.request(
                method,
                url,
                data=content,
                allow_redirects=False,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers or None,
            )
        except BaseException as exc:
            self._slots.release()
            error = self._send_error(exc) if isinstance(exc, Exception) else None
            if error is None:
                raise
            raise error from None
        return Response(self, raw)

    def same_origin(self, url: str) -> bool:
        """Whether an absolute ``url`` points at this pool's origin (scheme, host and port)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        return (scheme, (parts.hostname or "").lower(), port) == (self.scheme, self.host.lower(), self.port)

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._loop is asyncio.get_running_loop():
            await session.close()

    # -- internals -------------------------------------------------------------------------------------

    def _session_here(self) -> aiohttp.ClientSession:
        """The session of the running loop, made on first use (aiohttp binds a session to a loop)."""
        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and self._loop is loop:
            return session
        connector = aiohttp.TCPConnector(
            limit=0,  # the in-flight limit is ours (``_slots``); aiohttp's pool never makes anyone wait
            keepalive_timeout=self.keepalive_expiry,
            ssl=ssl_context() if self.scheme == "https" or self._proxy_is_tls() else False,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding", "Content-Type"),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
            trust_env=False,  # the proxy comes from llmhost.net, as model pulls take it
        )
        self._session, self._loop = session, loop
        return session

    def _proxy_is_tls(self) -> bool:
        return self._proxy is not None and self._proxy.scheme == "https"

    def _url(self, path: str, params: Mapping[str, Any] | None) -> yarl.URL:
        cached = None if params else self._urls.get(path)
        if cached is not None:
            return cached
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
        url = yarl.URL(self._origin + target)
        if not params and len(self._urls) < _URL_CACHE:
            self._urls[path] = url
        return url

    def _send_error(self, exc: Exception) -> WireError | None:
        """aiohttp's failure before an answer, as ours (``None``: not a transport failure)."""
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            return ConnectError(f"proxy refused the tunnel: HTTP {exc.status} {exc.message}".rstrip())
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return ConnectError(f"cannot connect to the proxy: {_describe(exc.os_error)}")
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return ConnectError(f"TLS certificate refused: {exc.certificate_error}")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ConnectError(_describe(exc.os_error))
        if isinstance(exc, aiohttp.ServerTimeoutError):  # no read timeouts are set: only connect's
            return ConnectTimeout(f"connect timeout ({self.connect_timeout:g}s)")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return RemoteProtocolError("server disconnected without sending a response")
        if isinstance(exc, aiohttp.ClientResponseError):  # llhttp refused the answer's head
            return RemoteProtocolError(f"malformed response: {_first_line(exc.message)}")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return RemoteProtocolError(f"malformed response: {_payload_detail(exc)}")
        if isinstance(exc, ssl.SSLError):
            return ConnectError(f"TLS: {_describe(exc)}")
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return RemoteProtocolError(f"connection broke before an answer: {_describe(exc)}")
        return None


def _proxy(scheme: str, host: str) -> tuple[yarl.URL | None, dict[str, str]]:
    """The proxy URL aiohttp is to use for ``scheme://host`` (with its own scheme), and its headers.

    :func:`llmhost.net.proxy_for` decides whether a proxy applies (``NO_PROXY``, loopback); the proxy
    URL's scheme decides how to reach it: ``https://`` is TLS to the proxy, never plaintext. Any other
    kind (``socks5://`` ...) is refused rather than spoken to as if it were an HTTP proxy.
    """
    proxy = proxy_for(scheme, host)
    if proxy is None:
        return None, {}
    proxies = urllib.request.getproxies()
    configured = proxies.get(scheme) or proxies.get("all") or ""
    kind = configured.split("://", 1)[0].lower() if "://" in configured else "http"
    if kind not in ("http", "https"):
        raise ValueError(f"a {kind}:// proxy is not supported (only http:// and https:// proxies)")
    where = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
    return yarl.URL(f"{kind}://{where}:{proxy.port}"), dict(proxy.headers)


def _read_error(exc: BaseException) -> ReadError:
    """aiohttp's failure while a body was read, as ours."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ReadError(f"body cut short or malformed: {_payload_detail(exc)}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return ReadError(f"malformed body: {_first_line(exc.message)}")
    return ReadError(f"connection broke during the body: {_describe(exc)}")


def _payload_detail(exc: aiohttp.ClientPayloadError) -> str:
    """The parser's own reason inside aiohttp's "payload is not completed" wrapper."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.http_exceptions.HttpProcessingError) and cause.message:
        return _first_line(cause.message)
    return _first_line(str(exc))


def _first_line(text: str) -> str:
    """The first line of a parser message (the rest quotes the offending bytes)."""
    return text.strip().split("\n", 1)[0].rstrip(":").strip() or "unknown parse error"


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
