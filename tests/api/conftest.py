"""Fixtures of the API tests: the official ``openai`` client on the test's live server."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.conftest import LiveServer


@pytest.fixture
def client(server: LiveServer, openai_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    """The official client on ``server`` (no retries; closed at the end)."""
    return openai_client(server)
