"""The datasets' HTTP door: ``/v1/datasets`` (create, list, get, delete), their documents (upload as
multipart or JSON, list, delete) and hybrid search with citations, in OpenAI's error envelope."""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.datasets.routes import router

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    app.include_router(router)
