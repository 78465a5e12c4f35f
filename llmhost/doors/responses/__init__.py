"""OpenAI's Responses API: ``/v1/responses`` (create, retrieve, delete, input items, input tokens),
with responses stored in the service's SQLite database so ``previous_response_id`` continues a
conversation server-side."""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.responses.routes import STORE_ATTR, router
from llmhost.doors.responses.store import ResponseStore

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    """Serve the Responses API on ``app``; its store opens on first use and closes with the app."""
    setattr(app.state, STORE_ATTR, ResponseStore(app.state.service.settings.database_for("llmhost.db")))
    app.include_router(router)
