"""Body-size limit and API-key auth, before any route runs (plain ASGI middleware, cheap on every request).

The key is accepted as ``Authorization: Bearer <key>`` (OpenAI, Ollama clients) or ``x-api-key: <key>``
(Anthropic clients) on ``/v1`` and ``/api``; the authenticated principal is left in the ASGI scope for
the doors to put into each request's context. Refusals come out in the envelope of the dialect the path
belongs to (each door registers its renderer with ``serve_errors``).
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmhost.core.types import Principal
from llmhost.doors.common import ErrorRenderer, renderer_for
from llmhost.errors import ErrorInfo

__all__ = ["PRINCIPAL_KEY", "GateMiddleware"]

PRINCIPAL_KEY = "llmhost.principal"
_KEY_PRINCIPAL = Principal(name="api-key", key_id="default")


class _BodyTooLarge(Exception):
    pass


class GateMiddleware:
    """Body-size limit and API-key auth, before any route runs."""

    def __init__(
        self, app: ASGIApp, *, max_body: int, api_key: str | None, renderers: dict[str, ErrorRenderer]
    ) -> None:
        self.app = app
        self.renderers = renderers
        self.max_body = max_body
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["method"] in ("POST", "DELETE") and scope["path"].startswith(("/v1", "/api")):
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
                await self._refuse(scope, receive, send, info)
                return
            scope[PRINCIPAL_KEY] = _KEY_PRINCIPAL
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._refuse(scope, receive, send, _too_large(self.max_body))
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
                await self._refuse(scope, receive, send, _too_large(self.max_body))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, info: ErrorInfo) -> None:
        response = renderer_for(self.renderers, scope["path"])(info)
        await response(scope, receive, send)


def _too_large(limit: int) -> ErrorInfo:
    message = f"request body is larger than the {limit} bytes this server accepts"
    return ErrorInfo(413, "too_large", message, None, "request_too_large")
