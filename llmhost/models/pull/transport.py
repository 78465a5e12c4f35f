"""The HTTP GET under a download: the standard library's ``http.client``, following redirects.

Proxies and TLS come from :mod:`llmhost.net`; ``Authorization`` only goes to the first origin, and an
``https`` URL is never redirected to plain ``http`` (loopback aside). On loopback, ``http.client`` with
large ``readinto`` buffers matches ``curl``, where httpx's 64 KiB chunking reached about a third of that.
Failures worth retrying (dropped connections, timeouts) are raised as :class:`_Transient`.

With a :class:`~llmhost.net.DestinationPolicy` (a pull an API client asked for), every hop's host is
resolved and checked, and the connection goes to the addresses checked (:class:`_PinnedHTTPConnection`),
not to a second lookup; through a proxy, the proxy resolves the name itself, so only the check applies.
A refused destination fails like a refused connection (:class:`_Transient`, retried), so neither the
answer nor its timing tells a name that resolves to a private address from one that does not resolve.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from llmhost.errors import ModelError
from llmhost.models.pull.spec import _display_url
from llmhost.net import DestinationPolicy, ResolvedAddress, connect_any, is_loopback, proxy_for, ssl_context

_TIMEOUT_S = 30.0
_MAX_REDIRECTS = 10
_USER_AGENT = "llmhost/0.1 (python http.client)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _Transient(Exception):
    """A failure worth retrying (dropped connection, timeout, 5xx)."""


class FetchError(ModelError):
    """Fetching a remote file failed: no connection, TLS, a timeout, an error status, a bad redirect, or
    a destination :class:`~llmhost.net.DestinationPolicy` refuses.

    ``str()`` is the detailed reason, for the CLI and the server's log. :attr:`public_message` names only
    the URL: an HTTP client that chose the URL must not learn whether a port refused, spoke TLS or
    answered 404, or ``/api/pull`` becomes a port scanner of whatever the server can reach.
    """

    def __init__(self, detail: str, *, url: str) -> None:
        super().__init__(detail)
        self.url = url
        """The URL asked for, without its query (:func:`~llmhost.models.pull.spec._display_url`)."""

    @property
    def public_message(self) -> str:
        return f"could not fetch {self.url}; the server's log has the reason"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP to ``host`` (its ``Host`` header) over a connection to addresses already checked."""

    def __init__(self, host: str, port: int, addresses: list[ResolvedAddress], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = connect_any(self._addresses, self.timeout)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``host`` (SNI and certificate check for the name) over addresses already checked."""

    def __init__(
        self,
        host: str,
        port: int,
        addresses: list[ResolvedAddress],
        timeout: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._addresses = addresses
        self._tls = context

    def connect(self) -> None:
        sock = connect_any(self._addresses, self.timeout)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class _Response:
    """An open HTTP response and its connection, after redirects."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str) -> None:
        self.conn = conn
        self.resp = resp
        self.url = url
        self.hub_headers: dict[str, str] = {}

    @property
    def status(self) -> int:
        return int(self.resp.status)

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name) or self.hub_headers.get(name.lower())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.resp.close()
        with contextlib.suppress(Exception):
            self.conn.close()


def _request(url: str, headers: dict[str, str], destinations: DestinationPolicy | None = None) -> _Response:
    """``GET url`` with ``headers``, following redirects (``Authorization`` only goes to the first origin).

    With ``destinations``, each hop connects only where the policy allows (see the module's docstring).
    """
    origin = urlsplit(url)
    shown = _display_url(url)
    current = url
    hub_headers: dict[str, str] = {}
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        if scheme not in ("http", "https") or not host:
            raise FetchError(f"cannot download from {_display_url(current)}: not an http(s) URL", url=shown)
        port = parts.port or (443 if scheme == "https" else 80)
        same_origin = (scheme, host, port) == (
            origin.scheme.lower(),
            origin.hostname or "",
            origin.port or (443 if origin.scheme.lower() == "https" else 80),
        )
        send = {
            "User-Agent": _USER_AGENT,
            "Accept": "*/*",
            **{k: v for k, v in headers.items() if same_origin or k.lower() != "authorization"},
        }
        proxy = proxy_for(scheme, host)
        addresses: list[ResolvedAddress] | None = None
        if destinations is not None:
            try:
                addresses = destinations.resolve(host, port)
            except OSError as exc:
                raise _Transient(f"cannot connect to {host}:{port}: {_os_reason(exc)}") from None
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        conn: http.client.HTTPConnection
        if addresses is not None and proxy is None:
            if scheme == "https":
                conn = _PinnedHTTPSConnection(host, port, addresses, _TIMEOUT_S, ssl_context())
            else:
                conn = _PinnedHTTPConnection(host, port, addresses, _TIMEOUT_S)
        elif scheme == "https":
            if proxy is not None:
                conn = http.client.HTTPSConnection(
                    proxy.host, proxy.port, timeout=_TIMEOUT_S, context=ssl_context()
                )
                conn.set_tunnel(host, port, headers=proxy.headers)
            else:
                conn = http.client.HTTPSConnection(host, port, timeout=_TIMEOUT_S, context=ssl_context())
        elif proxy is not None:
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=_TIMEOUT_S)
            target = f"http://{host}:{port}{target}"
            send.update(proxy.headers)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=_TIMEOUT_S)
        try:
            conn.request("GET", target, headers=send)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _Transient(f"cannot connect to {host}:{port}: {_os_reason(exc)}") from None
        if resp.status in _REDIRECTS:
            for key in ("X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size", "X-Error-Code"):
                value = resp.getheader(key)
                if value is not None:
                    hub_headers.setdefault(key.lower(), value)
            location = resp.getheader("Location")
            with contextlib.suppress(Exception):
                resp.read(1 << 16)
            conn.close()
            if not location:
                raise FetchError(
                    f"{_display_url(current)} answered {resp.status} without a Location", url=shown
                )
            nxt = urljoin(current, location)
            nxt_parts = urlsplit(nxt)
            if (
                scheme == "https"
                and nxt_parts.scheme.lower() != "https"
                and not is_loopback(nxt_parts.hostname or "")
            ):
                raise FetchError(f"refusing a redirect from https to {_display_url(nxt)}", url=shown)
            current = nxt
            continue
        response = _Response(conn, resp, current)
        response.hub_headers = hub_headers
        return response
    raise FetchError(f"too many redirects downloading {shown}", url=shown)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _strip_etag(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


def _socket_reader(resp: http.client.HTTPResponse) -> Callable[[memoryview], int]:
    """``readinto`` that returns what has arrived (one ``recv``), straight from the response's socket.

    Every byte received then reaches the disk at once, so a kill loses nothing already received, where
    ``HTTPResponse.readinto`` waits to fill the whole buffer. ``BufferedReader.readinto1`` does one more
    (blocking) ``recv`` even when bytes are already buffered, so the bytes that arrived with the headers
    are taken first with ``read1``, which returns buffered bytes alone. For bodies with a Content-Length.
    """
    fp = resp.fp
    first = True

    def readinto(view: memoryview) -> int:
        nonlocal first
        if first:
            first = False
            data = fp.read1(len(view))
            view[: len(data)] = data
            return len(data)
        return fp.readinto1(view)

    return readinto
