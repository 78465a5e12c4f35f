"""What every outbound connection shares: the system's proxy settings and the TLS trust store, and the
address policy for connections an API client chooses the destination of.

Model pulls (``models/pull/``) and the gateway's upstream client (``providers/wire.py``) both go through
these, so a proxy set in ``HTTPS_PROXY``/``NO_PROXY`` or a CA bundle in ``SSL_CERT_FILE`` applies to both
the same way. Loopback hosts never go through a proxy.

:class:`DestinationPolicy` keeps a fetch that an API client asked for (``/api/pull`` of a URL) away from
this machine and its networks (server-side request forgery): :meth:`DestinationPolicy.resolve` looks the
name up once, refuses it when any of its addresses is not a public unicast one (unless the operator
allows that host or network), and returns the addresses checked, which :func:`connect_any` then connects
to, so a DNS answer that changes between the check and the connection (rebinding) is never used.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import ipaddress
import re
import socket
import ssl
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = [
    "BlockedDestinationError",
    "DestinationPolicy",
    "Proxy",
    "ResolvedAddress",
    "connect_any",
    "is_loopback",
    "is_public_address",
    "parse_allow_entry",
    "proxy_for",
    "ssl_context",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ResolvedAddress = tuple[int, int, int, tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]]
"""``(family, type, proto, sockaddr)``: one connectable address, as :func:`socket.getaddrinfo` gives it."""

_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\Z"
)
# NAT64 prefixes (RFC 6052 well-known, RFC 8215 local use): the last 32 bits are an IPv4 address the
# translator connects to, so 64:ff9b::a00:1 reaches 10.0.0.1.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


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


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address: not loopback, private (RFC 1918), shared (CGNAT),
    link-local (169.254/16, where cloud metadata services answer), unique- or site-local IPv6,
    multicast, unspecified, reserved or documentation. An IPv4 address inside IPv6 (mapped, 6to4,
    NAT64) is judged by that IPv4 address, since that is where the packets end up."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if address.is_site_local:  # deprecated (RFC 3879) but still routed inside some sites
            return False
    return address.is_global and not address.is_multicast


def parse_allow_entry(entry: str) -> str | IPNetwork:
    """One ``pull_allow_hosts`` entry: an address or network (``10.1.2.3``, ``10.0.0.0/8``, ``fd00::/8``),
    else a host name (lower-cased, without a trailing dot). Raises :class:`ValueError` otherwise."""
    text = entry.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    if _HOSTNAME_RE.match(text) is None:
        raise ValueError(f"{entry!r} is neither a host name nor an IP address or network (CIDR)")
    return text


class BlockedDestinationError(OSError):
    """A destination the policy refuses. An :class:`OSError`, as a firewall's refusal would be, so callers
    treat it like any other failure to connect."""


class DestinationPolicy:
    """Where a fetch chosen by an API client may connect: public unicast addresses (see
    :func:`is_public_address`), plus the host names and networks the operator allows."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._names: set[str] = set()
        self._networks: list[IPNetwork] = []
        for entry in allow:
            parsed = parse_allow_entry(entry)
            if isinstance(parsed, str):
                self._names.add(parsed)
            else:
                self._networks.append(parsed)

    def allows_name(self, host: str) -> bool:
        """Whether ``host`` is a host name the operator allows (whatever it resolves to)."""
        return host.lower().rstrip(".") in self._names

    def allows_address(self, address: IPAddress) -> bool:
        """Whether ``address`` is public or inside a network the operator allows."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 for an allowed 10.0.0.0/8 too
        if any(address.version == net.version and address in net for net in self._networks):
            return True
        return is_public_address(address)

    def refusal(self, host: str) -> str | None:
        """Why ``host`` is refused when that is known without a DNS lookup (an address, ``localhost``),
        else ``None``; a name is judged by :meth:`resolve`."""
        if self.allows_name(host):
            return None
        if host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
            return f"{host} is this machine"
        address = _literal(host)
        if address is None or self.allows_address(address):
            return None
        return f"{address} is not a public address"

    def resolve(self, host: str, port: int) -> list[ResolvedAddress]:
        """``host``'s addresses for a TCP connection to ``port``, all of them checked; connect to these
        (:func:`connect_any`), never to a second lookup of the name.

        A name is refused when any of its addresses is refused: with one public and one private answer,
        a client falling back to the second would reach the private one. Raises
        :class:`BlockedDestinationError`, or :class:`OSError` (``socket.gaierror``) when the lookup fails.
        """
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        found: list[ResolvedAddress] = [(fam, kind, proto, addr) for fam, kind, proto, _, addr in infos]
        if self.allows_name(host):
            return found
        for _, _, _, sockaddr in found:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if not self.allows_address(address):
                raise BlockedDestinationError(
                    f"{host} resolves to {address}, which is not a public address (pull_allow_hosts)"
                )
        if not found:
            raise BlockedDestinationError(f"{host} has no address")
        return found


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def connect_any(addresses: Iterable[ResolvedAddress], timeout: float | None) -> socket.socket:
    """A TCP connection to the first of ``addresses`` that accepts one (as :func:`socket.create_connection`
    tries a name's addresses in turn); raises the last failure."""
    error: OSError | None = None
    for family, kind, proto, sockaddr in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except OSError as exc:
            with contextlib.suppress(OSError):
                sock.close()
            error = exc
            continue
        return sock
    raise error if error is not None else OSError("no address to connect to")


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
