"""Fallback, breakers and streams over real loopback HTTP.

The front llmhost routes ``smart`` to a fault-injecting OpenAI-style upstream first and to a second,
real llmhost (serving the tiny model) as the backup.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmhost.service import Service
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.providers.fault_server import Fault, FaultServer, closed_port


@pytest.fixture
def backup(tmp_path: Path, tiny_model_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path / "backup")
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    yield live
    live.stop()
    service.close()


@pytest.fixture
def fault() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


def front(
    tmp_path: Path, tiny_model_path: Path, first_url: str, backup: LiveServer
) -> tuple[LiveServer, Service]:
    providers: dict[str, Any] = {
        "flaky": {
            "type": "openai",
            "base_url": f"{first_url}/v1",
            "timeout_first_token": 1.0,
            "health_interval": 0,
        },
        "backup": {"type": "openai", "base_url": f"{backup.base_url}/v1", "health_interval": 0},
    }
    routes = {
        "smart": {
            "targets": [{"provider": "flaky", "model": "m"}, {"provider": "backup", "model": TINY}],
            "retries": 0,
        }
    }
    settings = make_settings(
        tmp_path / "front",
        providers=providers,
        routes=routes,
        breaker={"failures": 2, "window": 60, "cooldown": 0.5},
    )
    service = make_service(settings, tiny_model_path)
    return start_server(settings, service), service


@pytest.fixture
def setup(
    tmp_path: Path, tiny_model_path: Path, fault: FaultServer, backup: LiveServer
) -> Iterator[tuple[LiveServer, FaultServer]]:
    live, service = front(tmp_path, tiny_model_path, fault.base_url, backup)
    yield live, fault
    live.stop()
    service.close()


def chat(live: LiveServer, stream: bool = False) -> httpx.Response:
    body = {
        "model": "smart",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    }
    return httpx.post(f"{live.base_url}/v1/chat/completions", json=body, timeout=30)


def test_refused_connection_falls_back_to_the_backup_within_five_seconds(
    tmp_path: Path, tiny_model_path: Path, backup: LiveServer
) -> None:
    live, service = front(tmp_path, tiny_model_path, f"http://127.0.0.1:{closed_port()}", backup)
    try:
        started = time.perf_counter()
        r = chat(live)
        assert r.status_code == 200, r.text
        assert time.perf_counter() - started < 5
        assert r.headers["x-llmhost-target"] == f"backup/{TINY}"
        client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="x", max_retries=0)
        resp = client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert resp.usage is not None and resp.usage.completion_tokens >= 1
    finally:
        live.stop()
        service.close()


def test_server_errors_fall_back_and_open_the_breaker_then_it_closes(
    setup: tuple[LiveServer, FaultServer],
) -> None:
    live, fault = setup
    fault.reset(Fault(status=500, error={"error": {"message": "boom", "type": "server_error"}}))
    for _ in range(2):
        r = chat(live)
        assert r.status_code == 200 and r.headers["x-llmhost-target"] == f"backup/{TINY}"
    target = httpx.get(f"{live.base_url}/api/providers").json()["routes"][0]["targets"][0]
    assert target["breaker"] == "open"
    fault.reset()
    chat(live)
    assert fault.requests == []  # open: the flaky upstream is not even tried
    time.sleep(0.6)  # cooldown over: one half-open probe goes through and succeeds
    r = chat(live)
    assert r.headers["x-llmhost-target"] == "flaky/m"
    assert (
        httpx.get(f"{live.base_url}/api/providers").json()["routes"][0]["targets"][0]["breaker"] == "closed"
    )


def test_rate_limited_upstream_falls_back(setup: tuple[LiveServer, FaultServer]) -> None:
    live, fault = setup
    fault.reset(Fault(status=429, error={"error": {"message": "slow down"}}, headers={"Retry-After": "3"}))
    r = chat(live)
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == f"backup/{TINY}"


def test_stream_stalled_before_its_first_token_falls_back_transparently(
    setup: tuple[LiveServer, FaultServer],
) -> None:
    live, fault = setup
    fault.reset(Fault(stall_before_first_chunk=10))
    started = time.perf_counter()
    r = chat(live, stream=True)
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == f"backup/{TINY}"
    assert time.perf_counter() - started < 5
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and all("error" not in json.loads(e) for e in events[:-1])


def test_stream_cut_after_its_first_token_ends_with_an_error_event(
    setup: tuple[LiveServer, FaultServer],
) -> None:
    live, fault = setup
    fault.reset(Fault(chunks=5, cut_after=2))
    r = chat(live, stream=True)
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == "flaky/m"
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    payloads = [json.loads(e) for e in events[:-1]]
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p.get("choices"))
    assert text == "tok0tok1"  # what was sent stays sent; nothing is answered twice
    assert "error" in payloads[-1] and events[-1] == "[DONE]"


def test_client_errors_from_upstream_are_not_retried(setup: tuple[LiveServer, FaultServer]) -> None:
    live, fault = setup
    fault.reset(Fault(status=400, error={"error": {"message": "bad field", "type": "invalid_request_error"}}))
    r = chat(live)
    assert r.status_code == 400 and "bad field" in r.json()["error"]["message"]
