"""llmhost's own management routes under ``/api``: ``/api/load``, ``/api/unload``, ``/api/providers``,
``/api/usage``, and the dashboard's ``/api/status`` (:mod:`.status`), ``/api/keys`` (:mod:`.keys`),
``/api/audit/verify`` and ``/api/audit/recent`` (:mod:`.audit`). They answer errors in OpenAI's envelope,
as they always have; the routes Ollama's API shares (``/api/ps``, ``/api/pull``, ``/api/copy``,
``/api/delete`` ...) live in :mod:`llmhost.doors.ollama`.
"""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.admin import audit, keys, status
from llmhost.doors.admin.routes import router
from llmhost.doors.common import serve_errors
from llmhost.doors.openai.translate import render_error

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    app.include_router(router)
    # The dashboard's admin JSON: server status, API keys, audit verification.
    for extra in (status.router, keys.router, audit.router):
        app.include_router(extra)
    for path in (
        "/api/load",
        "/api/unload",
        "/api/providers",
        "/api/usage",
        "/api/status",
        "/api/keys",
        "/api/audit/verify",
        "/api/audit/recent",
    ):
        serve_errors(app, path, render_error)  # llmhost's own routes keep OpenAI's envelope
