"""The HTTP GET under a download: the standard library's ``http.client``, following redirects.

Proxies and TLS come from :mod:`llmhost.net`; ``Authorization`` only goes to the first origin, and an
``https`` URL is never redirected to plain ``http`` (loopback aside). On loopback, ``http.client`` with
large ``readinto`` buffers matches ``curl``, where httpx's 64 KiB chunking reached about a third of that.
Failures worth retrying (dropped connections, timeouts) are raised as :class:`_Transient`.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from llmhost.errors import ModelError
from llmhost.models.pull.spec import _display_url
from llmhost.net import is_loopback, proxy_for, ssl_context

_TIMEOUT_S = 30.0
_MAX_REDIRECTS = 10
_USER_AGENT = "llmhost/0.1 (python http.client)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _Transient(Exception):
    """A failure worth retrying (dropped connection, timeout, 5xx)."""


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


def _request(url: str, headers: dict[str, str]) -> _Response:
    """``GET url`` with ``headers``, following redirects (``Authorization`` only goes to the first origin)."""
    origin = urlsplit(url)
    current = url
    hub_headers: dict[str, str] = {}
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        if scheme not in ("http", "https") or not host:
            raise ModelError(f"cannot download from {_display_url(current)}: not an http(s) URL")
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
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        conn: http.client.HTTPConnection
        if scheme == "https":
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
                raise ModelError(f"{_display_url(current)} answered {resp.status} without a Location")
            nxt = urljoin(current, location)
            nxt_parts = urlsplit(nxt)
            if (
                scheme == "https"
                and nxt_parts.scheme.lower() != "https"
                and not is_loopback(nxt_parts.hostname or "")
            ):
                raise ModelError(f"refusing a redirect from https to {_display_url(nxt)}")
            current = nxt
            continue
        response = _Response(conn, resp, current)
        response.hub_headers = hub_headers
        return response
    raise ModelError(f"too many redirects downloading {_display_url(url)}")


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
