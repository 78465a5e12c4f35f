"""Model management over HTTP: /api/pull (plain URL + sha256), /api/copy (hot-swap), /api/delete, with
/api/load. Pull, copy and delete are Ollama's routes (errors as ``{"error": "..."}``); load and unload are
llmhost's own (errors in OpenAI's envelope, as they always were)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmhost.config import Settings
from llmhost.service import Service
from tests.conftest import TINY, LiveServer, make_settings
from tests.support import sha256_of
from tests.tiny_gguf import write_tiny_llama_gguf


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The file server is on loopback, which API pulls refuse unless allowed.
    return make_settings(tmp_path / "data", pull_allow_hosts=["127.0.0.1"])


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    model = write_tiny_llama_gguf(tmp_path / "served" / "m.gguf", seed=3)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(model.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    digest = sha256_of(model)
    yield f"http://127.0.0.1:{httpd.server_address[1]}/m.gguf", digest
    httpd.shutdown()


def test_pull_streams_progress_then_registers(server: LiveServer, file_server: tuple[str, str]) -> None:
    url, digest = file_server
    with httpx.stream(
        "POST",
        f"{server.base_url}/api/pull",
        json={"model": url, "register_as": "pulled", "sha256": digest},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert events[-1]["status"] == "success", events
    assert "pulled" in [m["id"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]]


def test_pull_with_a_wrong_checksum_registers_nothing(
    server: LiveServer, service: Service, file_server: tuple[str, str]
) -> None:
    """A checksum that does not match the download: not streamed, Ollama's answer to a failed pull (500,
    ``{"error": ...}`` naming both digests); streamed, the same message as the last line of a 200. Either
    way nothing is registered and no file is kept."""
    url, digest = file_server
    body = {"model": url, "register_as": "bad", "sha256": "0" * 64}
    message = (
        f"checksum mismatch for m.gguf: expected sha256 {'0' * 64}, got {digest}; the download was discarded"
    )
    r = httpx.post(f"{server.base_url}/api/pull", json={**body, "stream": False}, timeout=60)
    assert r.status_code == 500, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": message}

    with httpx.stream("POST", f"{server.base_url}/api/pull", json=body, timeout=60) as streamed:
        assert streamed.status_code == 200
        events = [json.loads(line) for line in streamed.iter_lines() if line]
    assert events[-1] == {"error": message}, events
    assert all("error" not in event for event in events[:-1]), events

    assert "bad" not in [m["id"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]]
    models_dir = service.settings.resolved_models_dir
    assert (models_dir / "downloads").is_dir()  # where the pull staged the file
    assert sorted((models_dir / "downloads").glob("*.partial*")) == []
    blobs = models_dir / "blobs"
    assert [p.name for p in blobs.iterdir()] == [
        f"sha256-{service.registry.get(TINY).digest.removeprefix('sha256:')}"
    ]


def test_copy_repoints_an_alias_and_delete_refuses_a_loaded_model(server: LiveServer) -> None:
    base = server.base_url
    r = httpx.post(f"{base}/api/copy", json={"source": TINY, "destination": "prod"})
    assert r.status_code == 200 and r.content == b""  # Ollama answers an empty 200
    assert "prod" in [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]]
    body = {"model": "prod", "prompt": "hi", "max_tokens": 2}
    assert httpx.post(f"{base}/v1/completions", json=body, timeout=30).status_code == 200
    r = httpx.request("DELETE", f"{base}/api/delete", json={"model": TINY})
    assert r.status_code == 409 and "unload" in r.json()["error"]  # Ollama's envelope: {"error": "..."}
    assert httpx.post(f"{base}/api/copy", json={"source": TINY, "destination": "../x"}).status_code == 400


def test_copy_of_an_unknown_model_is_404_and_a_bad_destination_400(server: LiveServer) -> None:
    base = server.base_url
    r = httpx.post(f"{base}/api/copy", json={"source": "missing", "destination": "x"})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    r = httpx.post(f"{base}/api/copy", json={"source": TINY, "destination": "bad name"})
    assert r.status_code == 400 and "name" in r.json()["error"]
    names = [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]]
    assert "x" not in names and "bad name" not in names


def test_copy_over_an_alias_deletes_its_old_file_unless_it_is_loaded(
    server: LiveServer, service: Service, tmp_path: Path
) -> None:
    base = server.base_url
    tiny_digest = service.registry.get(TINY).digest
    old = service.store.import_file(write_tiny_llama_gguf(tmp_path / "two.gguf", seed=5), "prod")
    r = httpx.post(f"{base}/api/copy", json={"source": TINY, "destination": "prod"})
    assert r.status_code == 200 and service.registry.get("prod").digest == tiny_digest
    assert not old.path.exists()  # "prod" was its last name and it was not loaded

    loaded = service.store.import_file(write_tiny_llama_gguf(tmp_path / "three.gguf", seed=6), "canary")
    assert httpx.post(f"{base}/api/load", json={"model": "canary"}, timeout=60).status_code == 200
    r = httpx.post(f"{base}/api/copy", json={"source": TINY, "destination": "canary"})
    assert r.status_code == 200
    assert service.registry.get("canary").digest == tiny_digest
    assert loaded.path.is_file()  # no name uses it, but it is loaded: kept
