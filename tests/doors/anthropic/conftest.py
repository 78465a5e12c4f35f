"""A live llmhost serving the Anthropic door, and the official ``anthropic`` client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from fastapi import FastAPI

from llmhost.config import Settings
from llmhost.doors.http.app import create_app
from llmhost.service import Service
from tests.conftest import LiveServer, make_settings


def messages_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """``create_app``'s app, which serves ``/v1/messages`` among every other door."""
    return create_app(settings, service)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A context window that fits a prompt listing tools (the tiny model spends a token per byte)."""
    return make_settings(tmp_path / "data", engine={"n_ctx": 2048})


@pytest.fixture
def server(settings: Settings, service: Service) -> Iterator[LiveServer]:
    live = LiveServer(messages_app(settings, service)).start()
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
