"""Body-size limit and API-key auth, before any route runs (plain ASGI middleware, cheap on every request).

The key is accepted as ``Authorization: Bearer <key>`` (OpenAI, Ollama clients) or ``x-api-key: <key>``
(Anthropic clients) on ``/v1`` and ``/api``; the authenticated principal is left in the ASGI scope for
the doors to put into each request's context. Refusals come out in the envelope of the dialect the path
belongs to.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmhost.core.types import Principal
from llmhost.errors import ErrorInfo

__all__ = ["GateMiddleware", "envelope_for_path"]

PRINCIPAL_KEY = "llmhost.principal"
_KEY_PRINCIPAL = Principal(name="api-key", key_id="default")


def envelope_for_path(path: str, info: ErrorInfo) -> dict[str, Any]:
    """The error body a client of ``path``'s dialect parses."""
    if path.startswith("/v1/messages"):
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            503: "overloaded_error",
            529: "overloaded_error",
        }.get(info.status, "api_error" if info.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": info.message}}
    if path.startswith("/api/") and not path.startswith(_ADMIN_PATHS):
        return {"error": info.message}
    type_ = "invalid_request_error" if info.status < 500 else "server_error"
    if info.status == 401:
        type_ = "invalid_request_error"
    return {"error": {"message": info.message, "type": type_, "param": info.param, "code": info.code}}


# llmhost's own management routes under /api answer in OpenAI's envelope, as they always have.
_ADMIN_PATHS = ("/api/load", "/api/unload", "/api/providers", "/api/usage")


class _BodyTooLarge(Exception):
    pass


class GateMiddleware:
    """Body-size limit and API-key auth, before any route runs."""

    def __init__(self, app: ASGIApp, *, max_body: int, api_key: str | None) -> None:
        self.app = app
        self.max_body = max_body
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["method"] == "POST" and scope["path"].startswith(("/v1", "/api")):
            # Bodies are JSON whatever the client declares: `curl -d '{...}'` sends a form content type.
            ctype = headers.get(b"content-type", b"")
            if not ctype.startswith(b"application/json"):
                raw = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*raw, (b"content-type", b"application/json")]}
        if self.api_key is not None and scope["path"].startswith(("/v1", "/api")):
            auth = headers.get(b"authorization", b"")
            token = (
                auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"").strip()
            )
            if not token or not secrets.compare_digest(token, self.api_key):
                message = "Incorrect API key provided." if token else "You didn't provide an API key."
                info = ErrorInfo(401, "authentication", message, None, "invalid_api_key")
                await _send_json(send, 401, envelope_for_path(scope["path"], info))
                return
            scope[PRINCIPAL_KEY] = _KEY_PRINCIPAL
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413, _too_large(scope["path"], self.max_body))
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await _send_json(send, 413, _too_large(scope["path"], self.max_body))


def _too_large(path: str, limit: int) -> dict[str, Any]:
    message = f"request body is larger than the {limit} bytes this server accepts"
    return envelope_for_path(path, ErrorInfo(413, "too_large", message, None, "request_too_large"))


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
