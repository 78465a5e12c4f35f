"""The ``internet`` group (scope ``tools:internet``): ``web_fetch`` and ``web_extract_links``, an HTTP(S)
GET of a public page with its text (or links) taken out of the HTML.

Every hop, the URL asked for and each redirect alike, is checked before a byte is sent (server-side
request forgery):

1. the URL is ``http``/``https`` with a host and without user info (``user:pass@``);
2. the host, lower-cased, must match no ``deny_hosts`` glob and, when ``allow_hosts`` is set, one of those;
3. a :class:`~llmhost.net.DestinationPolicy` built from ``allow_private`` refuses a literal address that is
   not public and ``localhost`` at once, then resolves the name once and refuses it when any of its
   addresses is not public (unless the name, or a network holding the address, is allowed);
4. the connection goes to those checked addresses (:func:`~llmhost.net.connect_any`), while the URL's name
   stays the ``Host`` header, the TLS server name and the name the certificate must carry, so a DNS
   answer that changes between check and connection (rebinding) is never used.

This is the standard library's ``http.client`` with ``connect`` overridden, as the model pulls do: the
simplest way to pin the checked addresses (httpx would need its own transport for it). System proxy
settings are not used, since a proxy would resolve the name itself, after the check.

The time cap covers the whole fetch, redirects included: the lookup runs on a worker thread waited on no
longer than the time left, each connection attempt gets the time left, and a timer shuts the open socket
down when the time is up, so a server trickling its headers or body a byte at a time is cut off as well.
The size cap stops reading the body at ``max_bytes`` (``truncated``). A non-2xx answer is a result;
refusals, failures to connect and timeouts raise :mod:`llmhost.errors` with a one-line message.
"""

from __future__ import annotations

import codecs
import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from html.parser import HTMLParser
from typing import Annotated, ClassVar, Literal
from urllib.parse import quote, urldefrag, urljoin, urlsplit

from pydantic import BaseModel, Field

from llmhost import __version__
from llmhost.errors import (
    ConfigError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RefusedError,
    RequestError,
)
from llmhost.net import BlockedDestinationError, DestinationPolicy, ResolvedAddress, connect_any, ssl_context
from llmhost.systools.base import SystemTool, ToolGroup
from llmhost.systools.settings import InternetSettings

__all__ = ["InternetTools", "WebLink", "WebLinks", "WebPage"]

_HEADERS = {
    "User-Agent": f"llmhost/{__version__} (web_fetch)",
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.8",
    "Connection": "close",
}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_URL = 8192
_MAX_LINKS = 1000
_CHUNK = 64 * 1024
_HTML = ("text/html", "application/xhtml+xml")
_TEXT = frozenset({"application/json", "application/xml", "application/javascript", "application/yaml"})
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


class WebPage(BaseModel):
    """What ``web_fetch`` got."""

    url: str = Field(description="The URL finally fetched, after redirects.")
    status: int = Field(description="The HTTP status; a non-2xx answer is a result too, not an error.")
    content_type: str | None = Field(description="The body's media type (`text/html`), when the server said.")
    title: str | None = Field(description="The HTML page's <title>, else null.")
    text: str | None = Field(
        description=(
            "The body as text: HTML turned into readable text (format `text`) or as sent (`raw`), in its "
            "charset. Null for a binary body (an image, an archive), which is never returned."
        )
    )
    truncated: bool = Field(description="Whether the body was longer than max_bytes and cut there.")
    bytes_read: int = Field(description="Body bytes read (at most max_bytes).")
    redirects: list[str] = Field(description="The URLs that redirected, in order (empty when none did).")


class WebLink(BaseModel):
    """One link of a page."""

    url: str = Field(description="The absolute http(s) URL it points to, without its #fragment.")
    text: str = Field(description="The link's text (may be empty, an image link say).")


class WebLinks(BaseModel):
    """What ``web_extract_links`` got."""

    url: str = Field(description="The URL finally fetched, after redirects.")
    status: int = Field(description="The HTTP status; a non-2xx answer is a result too, not an error.")
    links: list[WebLink] = Field(description="The page's distinct http(s) links, in page order.")
    truncated: bool = Field(description="Whether the page had more links than max_links (the rest are cut).")
    body_truncated: bool = Field(description="Whether the page was cut at max_bytes (later links missed).")


@dataclass(slots=True)
class _Fetched:
    url: str
    status: int
    content_type: str | None
    charset: str | None
    body: bytes
    truncated: bool
    redirects: list[str]


class InternetTools(ToolGroup):
    """HTTP(S) GETs of public hosts, within the host lists and the size, time and redirect caps."""

    name: ClassVar[str] = "internet"
    scope: ClassVar[str] = "tools:internet"

    def __init__(self, settings: InternetSettings) -> None:
        self._settings = settings
        self._deny = [_host_pattern(p) for p in settings.deny_hosts]
        self._allow = [_host_pattern(p) for p in settings.allow_hosts]
        try:
            self._policy = DestinationPolicy(settings.allow_private)
        except ValueError as exc:
            raise ConfigError(f"[mcp.internet] allow_private: {exc}") from None

    def tools(self) -> list[SystemTool]:
        return [
            SystemTool("web_fetch", self.web_fetch, "Fetch a web page", open_world=True),
            SystemTool(
                "web_extract_links", self.web_extract_links, "List a web page's links", open_world=True
            ),
        ]

    def web_fetch(
        self,
        url: Annotated[str, Field(description="The http:// or https:// URL to GET.")],
        max_bytes: Annotated[
            int | None,
            Field(
                ge=1, description="Most body bytes to read; default and upper bound: the server's max_bytes."
            ),
        ] = None,
        format: Annotated[
            Literal["text", "raw"],
            Field(
                description=(
                    "`text`: HTML turned into readable text (headings as `#`, list items as `-`, blocks "
                    "parted by blank lines, scripts and styles dropped); `raw`: the body as sent, decoded."
                )
            ),
        ] = "text",
    ) -> WebPage:
        """Fetch a URL over HTTP(S) with GET, following redirects, and return the page as text: readable
        text for HTML (plus its title), the body itself for plain text, JSON or XML, nothing for binary
        bodies. Only public hosts are reached (private, loopback and link-local addresses are refused
        unless the server allows them), the server's host lists apply to every redirect, and the body is
        cut at max_bytes (`truncated`). An error status such as 404 is returned with its body, not raised."""
        page = self._fetch(url, self._limit(max_bytes))
        text: str | None = None
        title: str | None = None
        is_html = page.content_type in _HTML
        if _is_text(page.content_type, page.body):
            text = _decode(page.body, page.charset, is_html)
            if is_html:
                parsed = _PageParser.parse(text)
                title = parsed.title
                if format == "text":
                    text = parsed.text()
        return WebPage(
            url=page.url,
            status=page.status,
            content_type=page.content_type,
            title=title,
            text=text,
            truncated=page.truncated,
            bytes_read=len(page.body),
            redirects=page.redirects,
        )

    def web_extract_links(
        self,
        url: Annotated[str, Field(description="The http:// or https:// URL of an HTML page.")],
        max_links: Annotated[
            int, Field(ge=1, le=_MAX_LINKS, description="Most links returned (the rest are cut).")
        ] = 200,
    ) -> WebLinks:
        """Fetch an HTML page (with the same checks and caps as web_fetch) and list its links: each
        distinct http(s) link once, made absolute against the page's URL, with the link's text. A page that
        is not HTML has no links."""
        page = self._fetch(url, self._limit(None))
        found: dict[str, str] = {}
        if page.content_type in _HTML or (page.content_type is None and _is_text(None, page.body)):
            parsed = _PageParser.parse(_decode(page.body, page.charset, True))
            base = urljoin(page.url, parsed.base) if parsed.base else page.url
            for href, label in parsed.links:
                with contextlib.suppress(ValueError):
                    target = urldefrag(urljoin(base, href.strip())).url
                    if urlsplit(target).scheme in ("http", "https"):
                        found.setdefault(target, label[:300])
        links = [WebLink(url=k, text=v) for k, v in list(found.items())[:max_links]]
        return WebLinks(
            url=page.url,
            status=page.status,
            links=links,
            truncated=len(found) > max_links,
            body_truncated=page.truncated,
        )

    def _limit(self, max_bytes: int | None) -> int:
        cap = self._settings.max_bytes
        if max_bytes is not None and max_bytes > cap:
            raise RequestError(f"max_bytes may be at most {cap} (the server's limit)", param="max_bytes")
        return max_bytes or cap

    def _fetch(self, url: str, limit: int) -> _Fetched:
        """GET ``url``, following redirects, every hop checked (see the module's docstring)."""
        deadline = _Deadline(self._settings.timeout)
        try:
            return self._follow(url.strip(), limit, deadline)
        finally:
            deadline.stop()

    def _follow(self, url: str, limit: int, deadline: _Deadline) -> _Fetched:
        redirects: list[str] = []
        current = url
        while True:
            scheme, host, port, target = self._target(current)
            addresses = _resolve(self._policy, host, port, deadline)
            tls = ssl_context() if scheme == "https" else None
            conn = _PinnedConnection(host, port, addresses, deadline, tls)
            try:
                try:
                    conn.request("GET", target, headers=_HEADERS)
                    resp = conn.getresponse()
                    location = resp.getheader("Location")
                    if resp.status in _REDIRECTS and location:
                        if len(redirects) >= self._settings.max_redirects:
                            raise RefusedError(
                                f"more than {self._settings.max_redirects} redirects (max_redirects)"
                            )
                        redirects.append(current)
                        current = urljoin(current, location.strip())
                        continue
                    body, truncated = _read_body(resp, limit)
                except (OSError, http.client.HTTPException) as exc:
                    if deadline.cut or isinstance(exc, TimeoutError):
                        raise deadline.error() from None
                    raise ProviderConnectionError(
                        f"fetching from {host}:{port} failed: {_reason(exc)}"
                    ) from None
                if deadline.cut:
                    raise deadline.error()
            finally:
                conn.close()
            media, charset = _media(resp.getheader("Content-Type"))
            return _Fetched(current, resp.status, media, charset, body, truncated, redirects)

    def _target(self, url: str) -> tuple[str, str, int, str]:
        """``url``'s scheme, host (ASCII), port and request target, once the URL and host rules allow it."""
        if len(url) > _MAX_URL:
            raise RequestError(f"the URL is longer than {_MAX_URL} characters", param="url")
        if any(ch <= " " or ch == "\x7f" for ch in url):
            raise RequestError("the URL holds whitespace or control characters", param="url")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise RefusedError(
                f"only http and https URLs are fetched, not {scheme or 'one without a scheme'}"
            )
        if "@" in parts.netloc:
            raise RefusedError("URLs with user info (user:password@host) are refused")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
            host = (parts.hostname or "").rstrip(".")
            host = host if host.isascii() else host.encode("idna").decode("ascii")
        except (ValueError, UnicodeError):
            raise RequestError("the URL's host or port is not valid", param="url") from None
        if not host:
            raise RequestError("the URL has no host", param="url")
        if any(fnmatchcase(host, p) for p in self._deny):
            raise RefusedError(f"{host} is in deny_hosts")
        if self._allow and not any(fnmatchcase(host, p) for p in self._allow):
            raise RefusedError(f"{host} is not in allow_hosts")
        if (why := self._policy.refusal(host)) is not None:
            raise RefusedError(f"refused: {why} (allow_private can allow it)")
        target = "".join(c if c.isascii() else quote(c) for c in parts.path or "/")  # an IRI's path
        if parts.query:
            target += "?" + "".join(c if c.isascii() else quote(c) for c in parts.query)
        return scheme, host, port, target


class _Deadline:
    """The whole fetch's time limit; a timer shuts the socket being read down when it is up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cut = False
        self._end = time.monotonic() + seconds
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """The seconds left; raises :class:`ProviderTimeoutError` when none are."""
        left = self._end - time.monotonic()
        if left <= 0 or self.cut:
            raise self.error()
        return left

    def error(self) -> ProviderTimeoutError:
        return ProviderTimeoutError(f"the fetch took longer than {self.seconds:g} s (timeout)")

    def watch(self, sock: socket.socket) -> None:
        """Make ``sock`` the socket shut down when the time is up."""
        self._sock = sock

    def stop(self) -> None:
        self._timer.cancel()

    def _cut(self) -> None:
        self.cut = True
        if self._sock is not None:
            # The plain socket's shutdown, even on an SSLSocket: it wakes a blocked recv at once.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


def _resolve(policy: DestinationPolicy, host: str, port: int, deadline: _Deadline) -> list[ResolvedAddress]:
    """``host``'s addresses as the policy checked them, looked up on a thread waited on for the time left
    (``getaddrinfo`` itself has no timeout)."""
    box: list[list[ResolvedAddress] | BaseException] = []

    def lookup() -> None:
        try:
            box.append(policy.resolve(host, port))
        except BaseException as exc:
            box.append(exc)

    worker = threading.Thread(target=lookup, name="web-fetch-dns", daemon=True)
    worker.start()
    worker.join(deadline.left())
    if not box:
        raise deadline.error()
    result = box[0]
    if isinstance(result, BlockedDestinationError):
        raise RefusedError(
            f"refused: {host} resolves to an address that is not public (allow_private can allow it)"
        )
    if isinstance(result, OSError):
        raise ProviderConnectionError(f"cannot resolve {host}")
    if isinstance(result, BaseException):
        raise result
    return result


def _connect(addresses: list[ResolvedAddress], deadline: _Deadline) -> socket.socket:
    """A connection to the first checked address that takes one, each attempt within the time left."""
    error: OSError = OSError("no address to connect to")
    for address in addresses:
        try:
            sock = connect_any([address], deadline.left())
        except OSError as exc:
            error = exc
            continue
        deadline.watch(sock)
        return sock
    raise error


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP to ``host`` (its ``Host`` header) over a connection to the addresses checked; with ``tls``,
    HTTPS whose server name and certificate check are for ``host`` too."""

    def __init__(
        self,
        host: str,
        port: int,
        addresses: list[ResolvedAddress],
        deadline: _Deadline,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(host, port, timeout=deadline.left())
        self._addresses = addresses
        self._deadline = deadline
        self._tls = tls

    def connect(self) -> None:
        sock = _connect(self._addresses, self._deadline)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
                self._deadline.watch(sock)  # the handshake is under the timer too
                sock.do_handshake()
            except BaseException:
                sock.close()
                raise
        self.sock = sock


def _read_body(resp: http.client.HTTPResponse, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = resp.read1(min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    return body[:limit], len(body) > limit


def _host_pattern(pattern: str) -> str:
    return pattern.strip().lower().rstrip(".")


def _media(header: str | None) -> tuple[str | None, str | None]:
    """The media type and charset of a ``Content-Type`` value."""
    if not header:
        return None, None
    media = header.split(";", 1)[0].strip().lower() or None
    charset = _CHARSET.search(header)
    return media, charset.group(1) if charset else None


def _is_text(media: str | None, body: bytes) -> bool:
    """Whether a body of ``media`` type is text (without a type: whether it has no NUL byte)."""
    if media is None:
        return b"\x00" not in body[:1024]
    return media.startswith("text/") or media in _TEXT or media.endswith(("+json", "+xml"))


def _decode(body: bytes, charset: str | None, is_html: bool) -> str:
    """``body`` as text: a byte-order mark first, then ``charset``, then an HTML ``<meta>`` charset, then
    UTF-8; bytes invalid in it become U+FFFD."""
    if body.startswith(codecs.BOM_UTF8):
        charset = "utf-8-sig"
    elif body[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        charset = "utf-16"
    elif charset is None and is_html and (meta := _META_CHARSET.search(body[:4096])) is not None:
        charset = meta.group(1).decode("ascii")
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset, or a codec that is not a text encoding (base64)
        return body.decode("utf-8", errors="replace")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not valid ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or 'handshake'})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


_SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_LISTS = frozenset({"ul", "ol"})
_BLOCKS = "p div section article header footer main nav aside blockquote table form figure hr address"
_PARAGRAPHS = _HEADINGS | _LISTS | frozenset({*_BLOCKS.split(), "details", "fieldset", "dl", "pre"})
_LINES = frozenset(["br", "tr", "li", "dt", "dd", "figcaption", "summary", "caption", "option"])


class _PageParser(HTMLParser):
    """An HTML page's title, text and links (``html.parser``, which takes any HTML without raising).

    Scripts, styles and ``noscript`` are dropped; headings become ``# ...`` lines and list items
    ``- ...`` lines; blocks are parted by a blank line (outside lists); whitespace is collapsed but in
    ``<pre>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.base: str | None = None
        self.links: list[tuple[str, str]] = []
        self._lines: list[str] = []  # "" parts two blocks
        self._line: list[str] = []
        self._prefix = ""  # "## " or "- ", waiting for the line's text
        self._skip = self._pre = self._lists = 0
        self._title: list[str] | None = None
        self._link: tuple[str, list[str]] | None = None

    @classmethod
    def parse(cls, html: str) -> _PageParser:
        parser = cls()
        parser.feed(html)
        parser.close()
        return parser

    def text(self) -> str:
        self._break(False)
        return "\n".join(self._lines).strip("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        if self._skip:
            return
        href = dict(attrs).get("href")
        if tag == "title":
            self._title = []
        elif tag == "base":
            self.base = self.base or href
        elif tag == "a":
            self._end_link()
            self._link = (href, []) if href else None
        elif tag in ("td", "th"):
            self._line.append(" ")
        self._lists += tag in _LISTS
        self._pre += tag == "pre"
        self._block(tag)
        if tag in _HEADINGS:
            self._prefix = "#" * int(tag[1]) + " "
        elif tag == "li":
            self._prefix = "  " * max(self._lists - 1, 0) + "- "

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(self._skip - 1, 0)
        if self._skip or tag in _SKIP:
            return
        if tag == "title" and self._title is not None:
            self.title = self.title or " ".join("".join(self._title).split()) or None
            self._title = None
        elif tag == "a":
            self._end_link()
        if self._block(tag):
            self._prefix = ""
        self._lists -= tag in _LISTS and self._lists > 0
        self._pre -= tag == "pre" and self._pre > 0

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._title is not None:
            self._title.append(data)
            return
        if self._link is not None:
            self._link[1].append(data)
        if not self._pre:
            self._line.append(data)
            return
        first, *rest = data.split("\n")
        self._line.append(first)
        for piece in rest:  # every line of preformatted text kept, blank ones too
            self._lines.append(self._prefix + "".join(self._line).rstrip())
            self._line, self._prefix = [piece], ""

    def _end_link(self) -> None:
        if self._link is not None:
            self.links.append((self._link[0], " ".join("".join(self._link[1]).split())))
            self._link = None

    def _block(self, tag: str) -> bool:
        """End the line at a block's edge, parting blocks by a blank line outside lists; whether it was."""
        if tag in _PARAGRAPHS:
            self._break(self._lists <= (tag in _LISTS))
        elif tag in _LINES:
            self._break(False)
        return tag in _PARAGRAPHS or tag in _LINES

    def _break(self, paragraph: bool) -> None:
        text = "".join(self._line)
        text = text.rstrip() if self._pre else " ".join(text.split())
        self._line = []
        if text:
            self._lines.append(self._prefix + text)
            self._prefix = ""
        if paragraph and self._lines and self._lines[-1] != "":
            self._lines.append("")
