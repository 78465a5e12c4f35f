"""The Anthropic dialect: ``/v1/messages`` and ``/v1/messages/count_tokens``, for the official SDKs and
for Claude Code pointed at llmhost with ``ANTHROPIC_BASE_URL``."""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.anthropic import translate
from llmhost.doors.anthropic.routes import router
from llmhost.doors.common import serve_errors

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    app.include_router(router)
    serve_errors(app, "/v1/messages", translate.render_error)
