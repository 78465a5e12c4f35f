"""Logging: one JSON object per line (``log_format = "json"``) or plain text, and the request id.

Every HTTP request gets an id in the outermost middleware (:class:`RequestIdMiddleware`): the client's
``X-Request-Id`` when it is sane (1 to 128 characters of ``A-Z a-z 0-9 . _ -``, so it cannot forge log
lines or grow without bound), else a fresh ``req-<24 hex>``. The id is

- returned as ``x-request-id`` on every response, the gate's refusals and error pages included;
- left in the ASGI scope (``REQUEST_ID_KEY``), where the doors' request contexts take it from, so the
  pipeline, the usage rows and the audit record carry the same id;
- held in a context variable for the request's task, so every log line written while serving it
  (uvicorn's access line included) names it.

A JSON line holds ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``request_id`` when known,
``exc`` (the formatted traceback) when there is one, and for uvicorn's access log ``client``, ``method``,
``path``, ``http_version`` and ``status``. A record's other attributes (``extra=``) are left out on
purpose: only what a call site formats into its message reaches the log.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
from typing import TYPE_CHECKING, Any, Literal

from llmhost.core.types import new_id

if TYPE_CHECKING:  # the CLI imports this module: no web framework at its start-up
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID_HEADER",
    "REQUEST_ID_KEY",
    "JsonFormatter",
    "RequestIdMiddleware",
    "configure_logging",
    "current_request_id",
    "request_id_for",
]

REQUEST_ID_KEY = "llmhost.request_id"
"""Where :class:`RequestIdMiddleware` leaves the id in the ASGI scope."""

REQUEST_ID_HEADER = "x-request-id"
_HEADER_BYTES = REQUEST_ID_HEADER.encode()

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_HANDLER_NAME = "llmhost.stderr"

_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("llmhost_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this task, if any."""
    return _request_id.get()


def request_id_for(client_value: bytes | str | None) -> str:
    """The client's id when it is sane, else a new one."""
    if isinstance(client_value, bytes):
        client_value = client_value.decode("latin-1")
    if client_value is not None and _SANE_ID.fullmatch(client_value):
        return client_value
    return new_id("req")


class RequestIdMiddleware:
    """Gives each HTTP request its id (see the module docstring); the app's outermost layer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = next((v for k, v in scope.get("headers") or () if k == _HEADER_BYTES), None)
        request_id = request_id_for(client)
        scope[REQUEST_ID_KEY] = request_id

        header = (_HEADER_BYTES, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Replaces the one a door's route set (the same id), so it is never sent twice.
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER_BYTES]
                message = {**message, "headers": [*kept, header]}
            await send(message)

        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            entry.update(client=client, method=method, path=path, http_version=version, status=status)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a message's control or line-separator characters cannot break the one-line form.
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: Literal["text", "json"] = "text") -> logging.Handler:
    """The root logger for ``llmhost serve``: a handler on stderr in the format asked for (replacing the
    one an earlier call installed; handlers someone else added stay)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
