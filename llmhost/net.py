"""What every outbound connection shares: the system's proxy settings and the TLS trust store.

Model pulls (``models/pull/``) and the gateway's upstream client (``providers/wire.py``) both go through
these, so a proxy set in ``HTTPS_PROXY``/``NO_PROXY`` or a CA bundle in ``SSL_CERT_FILE`` applies to both
the same way. Loopback hosts never go through a proxy.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import ssl
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["Proxy", "is_loopback", "proxy_for", "ssl_context"]


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where it listens and the ``Proxy-Authorization`` header its URL's credentials make."""

    host: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost`` or a loopback address)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The system CAs (honouring ``SSL_CERT_FILE``/``SSL_CERT_DIR``) plus certifi's bundle when installed."""
    ctx = ssl.create_default_context()
    try:
        import certifi

        ctx.load_verify_locations(certifi.where())
    except (ImportError, OSError, ssl.SSLError):
        pass
    return ctx


def proxy_for(scheme: str, host: str) -> Proxy | None:
    """The proxy ``urllib`` would use for ``scheme://host`` (``*_PROXY``/``NO_PROXY``), if any."""
    if is_loopback(host):
        return None
    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass(host):
        return None
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    headers: dict[str, str] = {}
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(user_pass.encode()).decode()
    return Proxy(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), headers)
