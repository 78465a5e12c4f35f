"""The web dashboard, served at ``/ui`` by the server itself: plain HTML, CSS and ES-module JavaScript
shipped as package data (no CDN, no build step, works offline), over the same API and the same keys as
every other client. See :mod:`llmhost.doors.web.routes` for the routes and
:mod:`llmhost.doors.web.sessions` for the login session the cookie stands for.
"""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.web.routes import router
from llmhost.doors.web.sessions import SessionStore

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    """Serve the dashboard; its sessions live in ``app.state.web_sessions``, where the HTTP gate reads
    them (``GateMiddleware(sessions=...)``)."""
    app.state.web_sessions = SessionStore()
    app.include_router(router)
