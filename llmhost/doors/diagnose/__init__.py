"""The diagnose engine's HTTP door: ``/v1/diagnose``, ``/v1/diagnose/batch`` (NDJSON),
``/v1/diagnose/model``, ``/v1/diagnose/{id}`` and ``/v1/diagnose/{id}/feedback``, in OpenAI's error
envelope."""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.diagnose.routes import router

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    app.include_router(router)
