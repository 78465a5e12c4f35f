"""llmhost's own management routes under ``/api``: ``/api/load``, ``/api/unload``, ``/api/providers``,
``/api/usage``. They answer errors in OpenAI's envelope, as they always have; the routes Ollama's API
shares (``/api/ps``, ``/api/pull``, ``/api/copy``, ``/api/delete`` ...) live in :mod:`llmhost.doors.ollama`.
"""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.admin.routes import router
from llmhost.doors.common import serve_errors
from llmhost.doors.openai.translate import render_error

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    app.include_router(router)
    for path in ("/api/load", "/api/unload", "/api/providers", "/api/usage"):
        serve_errors(app, path, render_error)  # llmhost's own routes keep OpenAI's envelope
