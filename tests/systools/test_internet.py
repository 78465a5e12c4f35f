"""The internet group against real loopback HTTP(S) servers: what a fetch returns, and every way the
sandbox refuses (private, loopback and link-local targets, directly, by redirect and by a name resolving
there; host lists; schemes; user info) and caps (size, time, redirects)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmhost.errors import ProviderConnectionError, ProviderTimeoutError, RefusedError, RequestError
from llmhost.systools import internet
from llmhost.systools.internet import InternetTools
from llmhost.systools.settings import InternetSettings

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title> The  Test Page </title>
<style>body { color: red }</style><script>alert("no")</script></head><body>
<noscript>Turn JavaScript on</noscript>
<h1>Main heading</h1><p>First   paragraph, with <b>bold</b> text.</p><p>Second<br>line two</p>
<h2>Lists</h2><ul><li>one</li><li>two</li></ul>
<a href="/text#frag">plain text</a> <a href="https://example.com/x">elsewhere</a>
<a href="/text">again</a> <a href="mailto:a@example.com">mail</a> <a href="javascript:void(0)">js</a>
</body></html>"""


@dataclass
class Servers:
    port: int
    other: int
    release: threading.Event

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(routes: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            route = routes.get(self.path.split("?")[0])
            with contextlib.suppress(OSError):
                if route is None:
                    self._send(404, "text/plain", b"not here")
                else:
                    route(self)

        def _send(self, status: int, kind: str | None, body: bytes, **headers: str) -> None:
            self.send_response(status)
            if kind:
                self.send_header("Content-Type", kind)
            for key, value in headers.items():
                self.send_header(key.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:  # the handshake on the connection's thread, not the accepting one
            with contextlib.suppress(OSError):
                request = self.tls.wrap_socket(request, server_side=True)
                super().finish_request(request, client_address)
            return
        super().finish_request(request, client_address)


def _serve(routes: dict[str, Any], tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = _Server(("127.0.0.1", 0), _handler(routes))
    server.tls = tls
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _routes(servers: Servers) -> dict[str, Any]:
    def redirect(to: str) -> Any:
        return lambda h: h._send(302, None, b"", Location=to)

    def stall(h: Any) -> None:  # headers and a first byte, then nothing for 10 s
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"x")
        servers.release.wait(10)

    def trickle(h: Any) -> None:  # a byte every 0.2 s for 10 s: no single read ever waits long
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.end_headers()
        for _ in range(50):
            if servers.release.wait(0.2):
                break
            h.wfile.write(b"x")

    return {
        "/page": lambda h: h._send(200, "text/html; charset=utf-8", PAGE.encode()),
        "/latin1": lambda h: h._send(200, "text/html; charset=iso-8859-1", "<p>café</p>".encode("latin-1")),
        "/meta": lambda h: h._send(200, "text/html", b'<meta charset="windows-1252"><p>\x93quoted\x94</p>'),
        "/text": lambda h: h._send(200, "text/plain", b"plain text body\n"),
        "/host": lambda h: h._send(200, "text/plain", h.headers["Host"].encode()),
        "/binary": lambda h: h._send(200, "image/png", b"\x89PNG\r\n\x1a\n\x00\x00"),
        "/large": lambda h: h._send(200, "text/plain", b"a" * 1_000_000),
        "/gone": lambda h: h._send(410, "text/plain", b"gone for good"),
        "/to-other": redirect(f"http://127.0.0.1:{servers.other}/text"),
        "/to-relative": redirect("/text"),
        "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-private": redirect("http://10.0.0.1/"),
        "/to-localhost": redirect(f"http://localhost:{servers.port}/text"),
        "/to-file": redirect("file:///etc/passwd"),
        "/loop": redirect("/loop"),
        "/stall": stall,
        "/trickle": trickle,
    }


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    release = threading.Event()
    routes: dict[str, Any] = {}
    main, other = _serve(routes), _serve({"/text": _other_text})
    found = Servers(main.server_address[1], other.server_address[1], release)
    routes.update(_routes(found))
    yield found
    release.set()
    for server in (main, other):
        server.shutdown()
        server.server_close()


def _other_text(h: Any) -> None:
    h._send(200, "text/plain", b"from the other server")


def tools(**settings: Any) -> InternetTools:
    return InternetTools(InternetSettings(enabled=True, **settings))


LOOPBACK = {"allow_private": ["127.0.0.1"]}


# ----- what a fetch returns ----------------------------------------------------------------------------
def test_an_html_page_becomes_readable_text_with_its_title(servers: Servers) -> None:
    page = tools(**LOOPBACK).web_fetch(url=servers.url("/page"))
    assert (page.status, page.content_type, page.title) == (200, "text/html", "The Test Page")
    assert page.text is not None
    assert page.text.startswith("# Main heading\n\nFirst paragraph, with bold text.\n\nSecond\nline two\n")
    assert "## Lists\n\n- one\n- two\n" in page.text
    for hidden in ("alert", "color: red", "JavaScript", "The Test Page"):
        assert hidden not in page.text
    assert page.truncated is False and page.bytes_read == len(PAGE.encode()) and page.redirects == []


def test_raw_format_returns_the_html_as_sent(servers: Servers) -> None:
    page = tools(**LOOPBACK).web_fetch(url=servers.url("/page"), format="raw")
    assert page.text == PAGE and page.title == "The Test Page"


def test_the_charset_is_decoded_from_the_header_or_the_meta_tag(servers: Servers) -> None:
    group = tools(**LOOPBACK)
    assert group.web_fetch(url=servers.url("/latin1")).text == "café"
    assert group.web_fetch(url=servers.url("/meta")).text == "\u201cquoted\u201d"


def test_plain_text_is_returned_whole_and_a_binary_body_is_not(servers: Servers) -> None:
    group = tools(**LOOPBACK)
    text = group.web_fetch(url=servers.url("/text"))
    assert (text.text, text.content_type, text.title) == ("plain text body\n", "text/plain", None)
    binary = group.web_fetch(url=servers.url("/binary"))
    assert (binary.text, binary.content_type, binary.bytes_read) == (None, "image/png", 10)


def test_an_error_status_is_a_result_not_an_error(servers: Servers) -> None:
    page = tools(**LOOPBACK).web_fetch(url=servers.url("/gone"))
    assert (page.status, page.text) == (410, "gone for good")
    missing = tools(**LOOPBACK).web_fetch(url=servers.url("/café?q=é"))  # sent percent-encoded
    assert (missing.status, missing.text) == (404, "not here")


def test_redirects_are_followed_to_another_allowed_server(servers: Servers) -> None:
    group = tools(**LOOPBACK)
    page = group.web_fetch(url=servers.url("/to-other"))
    assert (page.url, page.text) == (f"http://127.0.0.1:{servers.other}/text", "from the other server")
    assert page.redirects == [servers.url("/to-other")]
    assert group.web_fetch(url=servers.url("/to-relative")).url == servers.url("/text")


def test_links_are_absolute_distinct_http_only_and_capped(servers: Servers) -> None:
    group = tools(**LOOPBACK)
    found = group.web_extract_links(url=servers.url("/page"))
    assert [(link.url, link.text) for link in found.links] == [
        (servers.url("/text"), "plain text"),
        ("https://example.com/x", "elsewhere"),
    ]
    assert found.truncated is False and found.body_truncated is False
    capped = group.web_extract_links(url=servers.url("/page"), max_links=1)
    assert len(capped.links) == 1 and capped.truncated is True
    assert group.web_extract_links(url=servers.url("/binary")).links == []


def test_a_host_allowed_by_name_may_be_loopback(servers: Servers) -> None:
    page = tools(allow_private=["localhost"]).web_fetch(url=servers.url("/text", host="localhost"))
    assert page.text == "plain text body\n"


def test_the_connection_goes_to_the_addresses_checked_not_a_second_lookup(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = _fake_dns(monkeypatch, {"pinned.example": ["127.0.0.1"]})
    page = tools(allow_private=["127.0.0.0/8"]).web_fetch(url=servers.url("/host", host="pinned.example"))
    assert page.text == f"pinned.example:{servers.port}"  # the name stays the Host
    assert lookups == ["pinned.example"]  # looked up once, for the check


# ----- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "10.1.2.3", "192.168.1.1", "169.254.169.254", "0.0.0.0",
     "[::ffff:127.0.0.1]", "[fe80::1]", "100.64.0.1", "127.1", "2130706433", "[fd00::1]"],
)  # fmt: skip
def test_private_loopback_and_link_local_hosts_are_refused(servers: Servers, host: str) -> None:
    with pytest.raises(
        RefusedError, match=r"not a public address|is this machine|resolves to an address that is not public"
    ):
        tools().web_fetch(url=f"http://{host}:{servers.port}/text")


@pytest.mark.parametrize("path", ["/to-metadata", "/to-private", "/to-localhost"])
def test_a_redirect_from_an_allowed_host_into_a_private_one_is_refused(servers: Servers, path: str) -> None:
    with pytest.raises(RefusedError, match="refused"):
        tools(**LOOPBACK).web_fetch(url=servers.url(path))


def test_a_name_resolving_to_loopback_is_refused(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(
        monkeypatch, {"intranet.example": ["127.0.0.1"], "mixed.example": ["93.184.215.14", "10.0.0.1"]}
    )
    for name in ("intranet.example", "mixed.example"):
        with pytest.raises(RefusedError, match="resolves to an address that is not public"):
            tools().web_fetch(url=servers.url("/text", host=name))


def test_deny_hosts_and_allow_hosts_are_checked_on_every_hop(servers: Servers) -> None:
    with pytest.raises(RefusedError, match="in deny_hosts"):
        tools(deny_hosts=["127.0.0.*"], **LOOPBACK).web_fetch(url=servers.url("/text"))
    with pytest.raises(RefusedError, match="not in allow_hosts"):
        tools(allow_hosts=["*.example.com"], **LOOPBACK).web_fetch(url=servers.url("/text"))
    allowed = tools(allow_hosts=["127.0.0.1"], allow_private=["127.0.0.1", "localhost"])
    assert allowed.web_fetch(url=servers.url("/text")).status == 200
    with pytest.raises(RefusedError, match="localhost is not in allow_hosts"):
        allowed.web_fetch(url=servers.url("/to-localhost"))


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://example.com/", "javascript:alert(1)",
            "example.com/page", "data:text/plain,hi"],
)  # fmt: skip
def test_schemes_other_than_http_and_https_are_refused(url: str) -> None:
    with pytest.raises(RefusedError, match="only http and https"):
        tools().web_fetch(url=url)


def test_a_redirect_to_another_scheme_is_refused(servers: Servers) -> None:
    with pytest.raises(RefusedError, match="only http and https"):
        tools(**LOOPBACK).web_fetch(url=servers.url("/to-file"))


def test_user_info_in_a_url_is_refused_without_echoing_it(servers: Servers) -> None:
    with pytest.raises(RefusedError, match="user info") as caught:
        tools(**LOOPBACK).web_fetch(url=f"http://admin:hunter2@127.0.0.1:{servers.port}/text")
    assert "hunter2" not in str(caught.value)


def test_bad_urls_are_request_errors() -> None:
    for url in (
        "http:///path",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "http://x/" + "a" * 9000,
    ):
        with pytest.raises(RequestError):
            tools().web_fetch(url=url)


# ----- caps --------------------------------------------------------------------------------------------
def test_the_body_is_cut_at_max_bytes(servers: Servers) -> None:
    group = tools(max_bytes=1000, **LOOPBACK)
    page = group.web_fetch(url=servers.url("/large"))
    assert (page.truncated, page.bytes_read, page.text) == (True, 1000, "a" * 1000)
    small = group.web_fetch(url=servers.url("/large"), max_bytes=10)
    assert (small.truncated, small.bytes_read) == (True, 10)
    whole = group.web_fetch(url=servers.url("/text"), max_bytes=16)
    assert (whole.truncated, whole.bytes_read) == (False, 16)
    with pytest.raises(RequestError, match="at most 1000"):
        group.web_fetch(url=servers.url("/large"), max_bytes=1001)


@pytest.mark.parametrize("path", ["/stall", "/trickle"])
def test_the_time_cap_covers_the_whole_fetch(servers: Servers, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match="longer than 1 s"):
        tools(timeout=1, **LOOPBACK).web_fetch(url=servers.url(path))
    assert time.monotonic() - started < 5  # the server would go on for 10 s


def test_redirects_beyond_max_redirects_are_refused(servers: Servers) -> None:
    with pytest.raises(RefusedError, match="more than 3 redirects"):
        tools(max_redirects=3, **LOOPBACK).web_fetch(url=servers.url("/loop"))
    with pytest.raises(RefusedError, match="more than 0 redirects"):
        tools(max_redirects=0, **LOOPBACK).web_fetch(url=servers.url("/to-relative"))


def test_a_closed_port_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProviderConnectionError, match=f"127.0.0.1:{port} failed"):
        tools(**LOOPBACK).web_fetch(url=f"http://127.0.0.1:{port}/")


# ----- HTTPS -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An HTTPS server with a self-signed certificate for ``pinned.example``; yields (port, cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command for a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=pinned.example",
         "-addext", "subjectAltName=DNS:pinned.example"],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server = _serve({"/host": lambda h: h._send(200, "text/plain", h.headers["Host"].encode())}, context)
    yield server.server_address[1], folder / "cert.pem"
    server.shutdown()
    server.server_close()


def test_https_checks_the_certificate_for_the_name_over_the_pinned_address(
    tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert = tls_server
    _fake_dns(monkeypatch, {"pinned.example": ["127.0.0.1"]})
    group = tools(allow_private=["pinned.example"])
    with pytest.raises(ProviderConnectionError, match="TLS certificate not valid"):
        group.web_fetch(url=f"https://pinned.example:{port}/host")
    monkeypatch.setattr(internet, "ssl_context", lambda: ssl.create_default_context(cafile=str(cert)))
    assert group.web_fetch(url=f"https://pinned.example:{port}/host").text == f"pinned.example:{port}"
    with pytest.raises(ProviderConnectionError, match="TLS certificate not valid"):  # not for 127.0.0.1
        tools(**LOOPBACK).web_fetch(url=f"https://127.0.0.1:{port}/host")


def _fake_dns(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> list[str]:
    """Make ``names`` resolve to the given addresses (other names as before); returns the lookups made."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in names:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)) for addr in names[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups
