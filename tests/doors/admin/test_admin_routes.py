"""llmhost's own management routes: ``/api/load``, ``/api/unload``, ``/api/providers``, ``/api/usage``,
with errors in OpenAI's envelope as they always had."""

from __future__ import annotations

import importlib

import httpx
import ollama
import pytest

from tests.conftest import TINY, LiveServer


@pytest.mark.parametrize("name", ["", ".routes"])
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(f"llmhost.doors.admin{name}")
    assert module.__all__ == sorted(module.__all__)
    for exported in module.__all__:
        assert hasattr(module, exported), exported


def test_unload_then_load_answers_the_ps_entry(server: LiveServer) -> None:
    base = server.base_url
    assert httpx.post(f"{base}/api/unload", json={"model": TINY}).json() == {
        "status": "unloaded",
        "model": TINY,
    }
    assert httpx.post(f"{base}/api/unload", json={"model": TINY}).json()["status"] == "not loaded"
    r = httpx.post(f"{base}/api/load", json={"model": TINY}, timeout=30)
    assert r.status_code == 200
    entry = r.json()
    assert entry["status"] == "loaded" and entry["name"] == TINY and entry["slots"] == 4
    assert [m.model for m in ollama.Client(host=base).ps().models] == [TINY]


def test_unknown_models_and_bad_bodies_answer_in_openais_envelope(server: LiveServer) -> None:
    base = server.base_url
    r = httpx.post(f"{base}/api/load", json={"model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(f"{base}/api/unload", json={"model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{base}/api/load", json={})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_providers_describes_the_gateway(server: LiveServer) -> None:
    described = httpx.get(f"{server.base_url}/api/providers").json()
    assert {"name": "local", "type": "local"} in described["providers"]
    assert described["routes"] == []


def test_usage_counts_requests_by_door(server: LiveServer) -> None:
    base = server.base_url
    ollama.Client(host=base).generate(model=TINY, prompt="hi", options={"num_predict": 2})
    httpx.post(f"{base}/v1/completions", json={"model": TINY, "prompt": "hi", "max_tokens": 2}, timeout=30)
    rows = httpx.get(f"{base}/api/usage", params={"by": "door"}).json()["rows"]
    assert {"ollama", "openai"} <= {row["door"] for row in rows}
    r = httpx.get(f"{base}/api/usage", params={"by": "planet"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "by"
