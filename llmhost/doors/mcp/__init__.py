"""The MCP door: llmhost as a Model Context Protocol server (the official ``mcp`` SDK), over
Streamable HTTP at ``/mcp`` on the running server (:func:`attach`) and over stdio (``llmhost mcp``).

Over HTTP the HTTP gate has already checked the ``Host`` and ``Origin`` headers (on every method of
``/mcp``, its event stream included) and the key; refusals there come out as JSON-RPC errors with the
HTTP status (401 with ``WWW-Authenticate: Bearer``, 403, 413). Each tool call then passes the MCP gate
(:mod:`llmhost.doors.mcp.gate`) and the pipeline.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from llmhost.core.types import Principal
from llmhost.doors.common import PRINCIPAL_KEY
from llmhost.doors.mcp.server import build_server, own_tools
from llmhost.errors import ErrorInfo
from llmhost.service import Service

__all__ = ["MCP_PATH", "attach", "build_server", "render_error"]

MCP_PATH = "/mcp"
_INVALID_REQUEST = -32600  # JSON-RPC's code for a request the server will not take
_SERVER_ERROR = -32603


def render_error(info: ErrorInfo) -> Response:
    """A refusal before the MCP session sees the request: a JSON-RPC error with the HTTP status."""
    code = _SERVER_ERROR if info.status >= 500 else _INVALID_REQUEST
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": info.message}}
    headers = dict(info.headers or {})
    if info.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="llmhost"')
    return JSONResponse(body, status_code=info.status, headers=headers)


class _SessionOwner:
    """Tells the SDK's session manager who calls (``scope["user"]``), so a session answers only the
    key that opened it: another key's request on it is a 404, as if it did not exist (the spec:
    servers SHOULD bind session ids to the user)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Any = scope.get(PRINCIPAL_KEY)
        if isinstance(principal, Principal):
            who = f"key:{principal.key_id}" if principal.key_id else f"principal:{principal.name}"
            token = AccessToken(token="", client_id=who, scopes=sorted(principal.scopes))
            scope = {**scope, "user": AuthenticatedUser(token)}
        await self.app(scope, receive, send)


def attach(app: FastAPI, service: Service) -> None:
    """Serve MCP at ``/mcp`` (unless ``[mcp] enabled = false``); its session manager runs for the
    app's lifetime (``app.state.lifespans``)."""
    if not service.settings.mcp.enabled:
        return
    service.toolbox.own = own_tools(service)  # agents' tool_groups call these tools in-process
    server = build_server(service)
    # Host and Origin are the HTTP gate's checks, for every door alike.
    server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        max_request_body_size=service.settings.max_request_bytes,
    )
    manager = server.session_manager
    app.router.routes.append(
        Route(
            MCP_PATH,
            endpoint=_SessionOwner(StreamableHTTPASGIApp(manager)),
            methods=["GET", "POST", "DELETE"],
        )
    )
    app.state.lifespans.append(manager.run)
    app.state.error_renderers[MCP_PATH] = render_error
