"""The dashboard's own routes under ``/ui``: the page, its static assets, and the session calls.

    GET  /ui, /ui/                 the single page (hash routes: #/chat, #/models, #/live ...)
    GET  /ui/assets/{version}/{f}  a static file; ``version`` is a hash of all of them, so an asset URL
                                   changes whenever any asset does and can be cached for a year
    POST /ui/login {"api_key"}     check the key once, open a session, set its cookie
    POST /ui/logout                end the session, clear the cookie
    GET  /ui/session               whether keys are required, whether this browser is logged in, as whom

Everything the pages show comes from the ordinary API (``/v1/...``, ``/api/...``), called with the session
cookie, which the HTTP gate turns back into the key (:mod:`llmhost.doors.http.gate`). The page itself
holds no data, so it is public.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from llmhost import __version__
from llmhost.core.types import Principal
from llmhost.doors.common import door_route
from llmhost.doors.openai.translate import render_error
from llmhost.doors.web.sessions import COOKIE_NAME, SessionStore, cookie_token
from llmhost.errors import AuthError, NotFoundError
from llmhost.net import is_loopback
from llmhost.security.auth import Authenticator
from llmhost.service import Service

__all__ = ["STATIC_DIR", "StaticAssets", "router"]

STATIC_DIR = Path(__file__).with_name("static")
VERSION_MARK = "__ASSETS__"  # index.html names its assets under this, replaced by /ui/assets/{version}

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page runs only its own scripts and styles and talks only to this server.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_ASSET_CACHE = "public, max-age=31536000, immutable"

router = APIRouter(prefix="/ui", route_class=door_route(render_error))


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str


class StaticAssets:
    """The files of ``static/``, read once: their bodies, and one version hash over all of them."""

    def __init__(self, folder: Path = STATIC_DIR) -> None:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _MEDIA_TYPES)
        digest = hashlib.sha256()
        self.files: dict[str, Asset] = {}
        for path in files:
            body = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + body + b"\0")
            self.files[path.name] = Asset(body, _MEDIA_TYPES[path.suffix])
        self.version = digest.hexdigest()[:16]
        index = self.files.pop("index.html")
        base = f"/ui/assets/{self.version}"
        self.page = index.body.decode().replace(VERSION_MARK, base).encode()


ASSETS = StaticAssets()


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, max_length=1024, description="An API key's secret.")


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _sessions(request: Request) -> SessionStore:
    sessions: SessionStore = request.app.state.web_sessions
    return sessions


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
async def page() -> Response:
    return Response(ASSETS.page, media_type=_MEDIA_TYPES[".html"], headers=_PAGE_HEADERS)


@router.get("/assets/{version}/{name}", include_in_schema=False)
async def asset(version: str, name: str) -> Response:
    found = ASSETS.files.get(name)
    if found is None or version != ASSETS.version:
        # A page from before an upgrade asks for the old version: it reloads (index.html is no-cache).
        raise NotFoundError(f"no dashboard asset {version}/{name}", code="not_found")
    headers = {"Cache-Control": _ASSET_CACHE, "X-Content-Type-Options": "nosniff"}
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.post("/login")
async def login(body: Login, request: Request) -> JSONResponse:
    """Check the key (401 if it is wrong) and open a session; the cookie holds only the session token."""
    auth = _service(request).auth
    secret = body.api_key.strip().encode()
    if not auth.required:
        return JSONResponse(_state(auth, None))  # an open server: nothing to log in to
    principal = auth.authenticate(secret)
    token = _sessions(request).create(secret)
    response = JSONResponse(_state(auth, principal))
    response.set_cookie(
        COOKIE_NAME, token, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> JSONResponse:
    token = _token(request)
    if token is not None:
        _sessions(request).end(token)
    response = JSONResponse(_state(_service(request).auth, None))
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response


@router.get("/session")
async def session(request: Request) -> dict[str, Any]:
    """This browser's session: the key's name and scopes when logged in. The key is checked again, so a
    revoked or expired key reads as logged out (and its session ends)."""
    auth = _service(request).auth
    if not auth.required:
        return _state(auth, None)
    token = _token(request)
    secret = _sessions(request).secret_for(token) if token is not None else None
    if secret is None:
        return _state(auth, None)
    try:
        principal = auth.authenticate(secret)
    except AuthError:
        _sessions(request).end(token or "")
        return _state(auth, None)
    return _state(auth, principal)


def _token(request: Request) -> str | None:
    return cookie_token(request.headers.get("cookie", "").encode("latin-1"))


def _secure(request: Request) -> bool:
    """``Secure`` on HTTPS and on loopback names, which browsers treat as secure contexts and keep a
    Secure cookie for over plain HTTP; not on plain HTTP to a network address, where a browser would drop
    a Secure cookie and no one could log in (put a TLS proxy in front of such a server)."""
    return request.url.scheme == "https" or is_loopback(request.url.hostname or "")


def _state(auth: Authenticator, principal: Principal | None) -> dict[str, Any]:
    required = auth.required
    if not required:
        principal = Principal(name="owner")  # an open loopback server: every right, no login
    return {
        "object": "session",
        "keys_required": required,
        "logged_in": required and principal is not None,
        "principal": None if principal is None else principal.name,
        "key_id": None if principal is None else principal.key_id,
        "scopes": [] if principal is None else sorted(principal.scopes),
        "models": [] if principal is None else list(principal.models),
        "version": __version__,
    }
