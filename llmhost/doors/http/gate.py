"""The HTTP gate: what every request passes before any route runs (plain ASGI, cheap on every request).

In order:

1. **Host check** (DNS rebinding): the ``Host`` header must name this server — localhost, a loopback
   address, this machine's hostname, the bind address, any IP on a wildcard bind, or a name in
   ``security.allowed_hosts``. A page on ``evil.example`` whose name was re-pointed at 127.0.0.1 sends
   ``Host: evil.example`` and is refused.
2. **Origin check** (cross-site request forgery): a state-changing request (not GET/HEAD/OPTIONS), and
   any request to ``/mcp``, whose ``Origin`` is neither this server's own nor in
   ``security.allowed_origins`` is refused. Browsers send
   ``Origin`` on every cross-origin POST; the official clients send none.
3. **Authentication and scope**: the secret (``Authorization: Bearer`` or ``x-api-key``) becomes a
   :class:`~llmhost.core.types.Principal` through the one :class:`~llmhost.security.auth.Authenticator`;
   the route's scope (:mod:`llmhost.doors.http.scopes`) must be among the principal's. The principal is
   left in the ASGI scope for the doors' request contexts; the pipeline's "auth" stage checks it again.
   A request with neither header but with the web dashboard's session cookie
   (:mod:`llmhost.doors.web.sessions`) is authenticated with the secret its session holds, again on every
   request (a revoked key's sessions stop working at once). Such a request, when it changes state, must
   carry an ``Origin`` that is this server's own: a missing one is refused too (cross-site request
   forgery rides on cookies; a client that sends its key in a header is not exposed to it).
4. **Body limit**: the body is read here (up to ``max_request_bytes``; more is 413, chunked or not) and
   handed on whole; the one exception is a model file pushed to ``POST /api/blobs/:digest``, which its
   route streams to disk. A body from a non-browser client is JSON whatever it declares (``curl -d`` sends a
   form content type), unless it is a ``multipart/form-data`` upload; a browser's is taken as declared,
   so a ``text/plain`` form post cannot pass as JSON.

Refusals come out in the envelope of the dialect the path belongs to (``serve_errors``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import json
import re
import socket
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmhost.doors.common import PRINCIPAL_KEY, ErrorRenderer, renderer_for
from llmhost.doors.http.scopes import ANY_KEY, required_scope
from llmhost.doors.web.sessions import SessionStore, cookie_token
from llmhost.errors import AuthError, ErrorInfo, RefusedError, classify
from llmhost.logs import REQUEST_ID_KEY
from llmhost.security.audit import AuditLog, AuditRecord
from llmhost.security.auth import OWNER, Authenticator, check_scope

__all__ = ["PRINCIPAL_KEY", "GateMiddleware", "HostPolicy", "origin_regex"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUDITED_SCOPES = frozenset({"models:write", "admin"})  # state-changing calls outside the pipeline
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
# Paths whose Origin is checked on every method: MCP's GET opens an event stream (the MCP spec asks
# servers to validate Origin on all its connections).
_ORIGIN_ALWAYS = frozenset({"/mcp"})
# The one body the gate does not read whole: a pushed model file (Ollama's POST /api/blobs/:digest).
_STREAMED_BODY = re.compile(r"/api/blobs/[^/]+")


def origin_regex(globs: list[str]) -> str:
    """One regular expression for origin globs (``http://localhost:*``), for the CORS middleware too."""
    return "|".join(re.escape(g).replace(r"\*", ".*") for g in globs)


class HostPolicy:
    """Which ``Host`` header values name this server."""

    def __init__(self, bind: str, extra: list[str]) -> None:
        self.wildcard = bind in _WILDCARD_BINDS
        names = {"localhost", bind.strip("[]").lower(), socket.gethostname().lower()}
        self.names = frozenset(n for n in names if n)
        self.extra = tuple(e.lower() for e in extra)

    def allows(self, host_header: str) -> bool:
        host = _host_part(host_header)
        if host is None:
            return False
        if host in self.names or host.endswith(".localhost"):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(fnmatch.fnmatchcase(host, glob) for glob in self.extra)
        return self.wildcard or address.is_loopback or host in self.extra


def _host_part(value: str) -> str | None:
    """``example.com:8080`` -> ``example.com``; ``[::1]:80`` -> ``::1``; malformed -> None."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else None
    host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return host.rstrip(".") or None


class GateMiddleware:
    """Host, Origin, key and scope checks and the body limit, before any route runs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        auth: Authenticator,
        hosts: HostPolicy,
        origins: list[str],
        renderers: dict[str, ErrorRenderer],
        audit: AuditLog | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.audit = audit
        self.renderers = renderers
        self.max_body = max_body
        self.auth = auth
        self.hosts = hosts
        self._origin = re.compile(origin_regex(origins)) if origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refusal = self._check(scope, headers)
        if refusal is not None:
            await self._refuse(scope, receive, send, refusal)
            return
        if scope["method"] == "POST" and _STREAMED_BODY.fullmatch(scope["path"]):
            # A model file pushed for /api/create: gigabytes, which its route writes to disk as they come
            # (hashing them) rather than the gate holding them in memory; the checks above still apply.
            if self.audit is not None:
                await self._audited(scope, b"", receive, send, self.audit, streamed=True)
            else:
                await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            info = _too_large(self.max_body) if length.isdigit() else _bad_length()
            await self._refuse(scope, receive, send, info)
            return
        if scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, self.max_body)
        if body is None:
            await self._refuse(scope, receive, send, _too_large(self.max_body))
            return
        declared = headers.get(b"content-type", b"")
        if (
            not _from_browser(headers)
            and not declared.startswith(b"application/json")
            and not declared.startswith(b"multipart/form-data")  # file uploads (datasets)
        ):
            raw = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*raw, (b"content-type", b"application/json")]}
        if self.audit is not None and required_scope(scope["method"], scope["path"]) in _AUDITED_SCOPES:
            await self._audited(scope, body, receive, send, self.audit)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _audited(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        audit: AuditLog,
        *,
        streamed: bool = False,
    ) -> None:
        """A model-management or admin call (pull, copy, delete, load, unload): outside the pipeline,
        so its audit record is written here, with the status it answered, before the answer's last
        byte goes out (a client that has its answer finds the record there)."""
        status = 0
        written = False
        started = time.perf_counter()

        def record() -> None:
            nonlocal written
            if written:
                return
            written = True
            principal = scope.get(PRINCIPAL_KEY) or OWNER
            model = _model_named(body)
            audit.append(
                AuditRecord(
                    ts=time.time(),
                    request_id=str(scope.get(REQUEST_ID_KEY) or ""),
                    key_id=principal.key_id or "",
                    principal=principal.name,
                    door="admin",
                    route=model,
                    target="",
                    model=model,
                    kind=f"{scope['method']} {scope['path']}",
                    stream=False,
                    prompt_tokens=0,
                    completion_tokens=0,
                    cost=0.0,
                    status=status or 500,
                    error="",
                    policy="[]",
                    latency_ms=round((time.perf_counter() - started) * 1000, 3),
                    prompt_sha256=hashlib.sha256(body).hexdigest(),
                    answer_sha256="",
                )
            )

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()
            await send(message)

        try:
            await self.app(scope, receive if streamed else _replay(body, receive), tracking_send)
        finally:
            record()  # an app that failed without answering

    def _check(self, scope: Scope, headers: dict[bytes, bytes]) -> ErrorInfo | None:
        """The refusal for this request, or None; the principal is left in ``scope``."""
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.hosts.allows(host):
            message = (
                f"Host {host!r} is not this server's; add it to security.allowed_hosts to serve it "
                "(this check stops DNS rebinding)"
            )
            return ErrorInfo(403, "permission", message, None, "host_not_allowed")
        origin = headers.get(b"origin")
        checked = scope["method"] not in _SAFE_METHODS or scope["path"] in _ORIGIN_ALWAYS
        if checked and origin is not None and not self._origin_ok(origin, host):
            shown = origin.decode("latin-1")
            message = f"cross-site request from origin {shown!r} refused (see security.allowed_origins)"
            return ErrorInfo(403, "permission", message, None, "origin_not_allowed")
        scope_needed = required_scope(scope["method"], scope["path"])
        if scope_needed is None:
            return None
        secret = _secret(headers)
        if secret is None and self.sessions is not None:
            foreign = checked and not _own_origin(origin, host)
            refusal, secret = self._session_secret(self.sessions, headers, foreign)
            if refusal is not None:
                return refusal
        try:
            principal = self.auth.authenticate(secret)
            if scope_needed != ANY_KEY:
                check_scope(principal, scope_needed)
        except (AuthError, RefusedError) as exc:
            return classify(exc)
        scope[PRINCIPAL_KEY] = principal
        return None

    def _session_secret(
        self, sessions: SessionStore, headers: dict[bytes, bytes], foreign: bool
    ) -> tuple[ErrorInfo | None, bytes | None]:
        """The secret of the dashboard session the cookie names (None: no cookie, or an ended session on
        a server that needs no key), or the refusal: an ended session, or a state-changing request whose
        ``Origin`` is missing or not this server's (``foreign``)."""
        token = cookie_token(headers.get(b"cookie", b""))
        if token is None:
            return None, None
        secret = sessions.secret_for(token)
        if secret is None and self.auth.required:
            message = "your dashboard session has ended (idle, logged out or restarted); log in again"
            return ErrorInfo(401, "authentication", message, None, "session_expired"), None
        if secret is not None and foreign:
            message = (
                "a request that changes state with the dashboard's session cookie must come from this "
                "server's own pages (its Origin header)"
            )
            return ErrorInfo(403, "permission", message, None, "origin_required"), None
        return None, secret

    def _origin_ok(self, origin: bytes, host: str) -> bool:
        if _own_origin(origin, host):  # the server's own pages (the dashboard)
            return True
        return self._origin is not None and self._origin.fullmatch(origin.decode("latin-1")) is not None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, info: ErrorInfo) -> None:
        response = renderer_for(self.renderers, scope["path"], scope.get("headers") or ())(info)
        await response(scope, receive, send)


def _own_origin(origin: bytes | None, host: str) -> bool:
    """Whether ``Origin`` names this server as the request's ``Host`` does (its own pages)."""
    return origin is not None and origin.decode("latin-1").split("://", 1)[-1] == host


def _model_named(body: bytes) -> str:
    """The model an admin call is about (``model``, else ``name``/``source``), for the audit record."""
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    for field in ("model", "name", "source"):
        if isinstance(data.get(field), str):
            return str(data[field])[:256]
    return ""


def _secret(headers: dict[bytes, bytes]) -> bytes | None:
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip() or None
    return headers.get(b"x-api-key", b"").strip() or None


def _from_browser(headers: dict[bytes, bytes]) -> bool:
    return b"origin" in headers or b"sec-fetch-mode" in headers


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` bytes (the rest is left unread)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


def _too_large(limit: int) -> ErrorInfo:
    message = f"request body is larger than the {limit} bytes this server accepts"
    return ErrorInfo(413, "too_large", message, None, "request_too_large")


def _bad_length() -> ErrorInfo:
    return ErrorInfo(400, "invalid_request", "malformed Content-Length header", None, "invalid_request")
