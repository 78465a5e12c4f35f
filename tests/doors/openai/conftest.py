"""The OpenAI door's tests on the tiny model: a live server whose context fits a prompt listing tools,
and the official client on it (a module may bring its own, as the Gemma tests do)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from llmhost.config import Settings
from tests.conftest import LiveServer, make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A context window that fits a prompt listing tools (the tiny model spends a token per byte)."""
    return make_settings(tmp_path / "data", engine={"n_ctx": 2048})


@pytest.fixture
def client(server: LiveServer, openai_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    return openai_client(server)
