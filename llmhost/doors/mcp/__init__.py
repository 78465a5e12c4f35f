"""The MCP door: llmhost as a Model Context Protocol server (the official ``mcp`` SDK), over
Streamable HTTP at ``/mcp`` on the running server (:func:`attach`) and over stdio (``llmhost mcp``).

Over HTTP the HTTP gate has already checked the ``Host`` and ``Origin`` headers (on every method of
``/mcp``, its event stream included) and the key; refusals there come out as JSON-RPC errors with the
HTTP status (401 with ``WWW-Authenticate: Bearer``, 403, 413). Each tool call then passes the MCP gate
(:mod:`llmhost.doors.mcp.gate`) and the pipeline.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route

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
        headers["WWW-Authenticate"] = 'Bearer realm="llmhost"'
    return JSONResponse(body, status_code=info.status, headers=headers)


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
        Route(MCP_PATH, endpoint=StreamableHTTPASGIApp(manager), methods=["GET", "POST", "DELETE"])
    )
    app.state.lifespans.append(manager.run)
    app.state.error_renderers[MCP_PATH] = render_error
