"""Loopback upstreams for the provider tests: one per wire format, started once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer
from tests.providers.fault_server import FaultServer
from tests.providers.wire_servers import anthropic_app, ollama_app, openai_app

ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
OPENAI_KEY = "sk-openai-test-fedcba9876543210"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[LiveServer]:
    live = LiveServer(anthropic_app(ANTHROPIC_KEY)).start(wait_ready=False)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def ollama_upstream() -> Iterator[LiveServer]:
    live = LiveServer(ollama_app()).start(wait_ready=False)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def openai_upstream() -> Iterator[LiveServer]:
    live = LiveServer(openai_app(OPENAI_KEY)).start(wait_ready=False)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def _fault_server() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


@pytest.fixture
def faults(_fault_server: FaultServer) -> FaultServer:
    """The fault server, answering correctly until the test sets ``faults.fault``."""
    _fault_server.reset()
    return _fault_server
