"""The agents' HTTP door: ``/v1/agents`` (CRUD), their runs and scorecards, ``/v1/scorecards`` (per
model) and ``/v1/feedback``, in OpenAI's error envelope. Chatting with an agent needs no route of its
own: every dialect's chat route takes the agent's name as the model."""

from __future__ import annotations

from fastapi import FastAPI

from llmhost.doors.agents.routes import router

__all__ = ["attach", "router"]


def attach(app: FastAPI) -> None:
    app.include_router(router)
