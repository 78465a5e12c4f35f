"""The Ollama dialect: ``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``, ``/api/show`` ...

Enough of Ollama's native API that the official ``ollama`` clients work against llmhost unchanged; see
:mod:`llmhost.doors.ollama.routes`. llmhost's own management routes under ``/api`` live in
:mod:`llmhost.doors.admin`.
"""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.common import serve_errors
from llmhost.doors.ollama import create, translate
from llmhost.doors.ollama.routes import router

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(create.router)
    serve_errors(app, "/api", translate.render_error)
