"""The Responses door as a package: its public names, and its store's life with the app."""

from __future__ import annotations

import importlib

import httpx
import pytest

from llmhost.config import Settings
from llmhost.doors.http.app import create_app
from llmhost.doors.responses.routes import STORE_ATTR
from llmhost.doors.responses.store import ResponseStore
from llmhost.service import Service
from tests.conftest import TINY, LiveServer


@pytest.mark.parametrize("name", ["", ".protocol", ".translate", ".events", ".store", ".routes"])
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(f"llmhost.doors.responses{name}")
    assert module.__all__ == sorted(module.__all__)
    for exported in module.__all__:
        assert hasattr(module, exported), exported


def test_the_store_lives_in_the_service_database_and_closes_with_the_app(
    settings: Settings, service: Service
) -> None:
    app = create_app(settings, service)
    store: ResponseStore = getattr(app.state, STORE_ATTR)
    assert store.target == str(settings.database_path)
    live = LiveServer(app).start()
    try:
        r = httpx.post(
            f"{live.base_url}/v1/responses", json={"model": TINY, "input": "hi", "max_output_tokens": 2}
        )
        assert r.status_code == 200
        assert store.is_open
    finally:
        live.stop()
    assert not store.is_open
