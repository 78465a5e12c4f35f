"""The OpenAI dialect: ``/v1/chat/completions`` (and its stored completions), ``/v1/completions``,
``/v1/embeddings``, ``/v1/models``."""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.openai import stored
from llmhost.doors.openai.routes import router

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(stored.router)
