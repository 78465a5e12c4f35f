"""Canary keys: secrets with distinctive values, driven through every way a request can fail, then looked
for everywhere the server writes — log records (text and JSON), ``/metrics``, response bodies and
headers, the audit rows, the usage rows, and the raw bytes of every file in the data dir.

The session-wide half of this lives in ``tests/conftest.py`` (:class:`~tests.conftest.SecretWatch`): every
secret any test makes is checked against every log record of the whole run.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmhost.logs import JsonFormatter
from llmhost.security import auth
from llmhost.security.keys import KeyStore
from tests.conftest import TINY, WATCH, make_service, make_settings, start_server
from tests.providers.fault_server import Fault, FaultServer

OWNER = "sk-canary-owner-6d1f0b9e4a7c2e58"  # the config file's all-scopes key
UPSTREAM = "sk-canary-upstream-3a9c5e7f1b2d4f60"  # a provider's key, sent upstream only
WRONG = "sk-canary-wrong-8e2a4c6b0d9f1e37"  # what a client sends that is no key at all

CHAT = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture
def upstream() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


def _bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def _drive(base: str, upstream: FaultServer, keys: dict[str, str]) -> list[httpx.Response]:
    """Requests that fail in every way the server knows, and a few that succeed."""
    got: list[httpx.Response] = []
    with httpx.Client(base_url=base, timeout=60) as client:

        def post(path: str, body: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> None:
            got.append(client.post(path, json=body, headers=headers or {}, **kw))

        # 401: a wrong key, a provider's key presented as a client key, on each dialect.
        for secret in (WRONG, UPSTREAM):
            post("/v1/chat/completions", CHAT, _bearer(secret))
            post("/v1/messages", {**CHAT, "max_tokens": 1}, {"x-api-key": secret})
            post("/api/chat", CHAT, _bearer(secret))
            got.append(client.get("/metrics", headers=_bearer(secret)))
        # 403: a key without the scope; a key whose model globs do not match.
        post("/v1/chat/completions", CHAT, _bearer(keys["reader"]))
        post("/v1/chat/completions", {**CHAT, "model": "up"}, _bearer(keys["tiny-only"]))
        got.append(client.get("/api/usage", headers=_bearer(keys["limited"])))
        # 429: requests per minute, tokens per minute, budget.
        post("/v1/chat/completions", CHAT, _bearer(keys["limited"]))
        post("/v1/chat/completions", CHAT, _bearer(keys["limited"]))
        post("/v1/chat/completions", CHAT, _bearer(keys["tight"]))
        post("/v1/chat/completions", {**CHAT, "model": "paid"}, _bearer(keys["broke"]))
        # 400: bodies that do not parse or validate, on each dialect.
        post("/v1/chat/completions", None, _bearer(OWNER), content=b"{not json")
        post("/v1/chat/completions", {"model": TINY}, _bearer(OWNER))
        post("/v1/chat/completions", {**CHAT, "max_tokens": "many"}, _bearer(OWNER))
        post("/v1/messages", {"model": TINY}, {"x-api-key": OWNER})
        post("/api/chat", {"model": TINY, "messages": "hi"}, _bearer(OWNER))
        # 413 and 404.
        post("/v1/chat/completions", None, _bearer(OWNER), content=b"x" * (2 * 1024 * 1024))
        post("/v1/no/such/path", CHAT, _bearer(OWNER))
        # Upstream failures on a provider configured with the canary key, some echoing it back.
        echo = {"error": {"message": f"Incorrect API key provided: {UPSTREAM}.", "type": "auth"}}
        for fault in (
            Fault(status=401, error=echo),
            Fault(status=500, raw_error=f"boom: bad credential {UPSTREAM}".encode()),
            Fault(status=429, error={"error": {"message": f"key {UPSTREAM} is rate limited"}}),
            Fault(status=400, error={"error": {"message": f"bad request for {UPSTREAM}"}}),
        ):
            upstream.reset(fault)
            post("/v1/chat/completions", {**CHAT, "model": "up"}, _bearer(OWNER))
            post("/v1/chat/completions", {**CHAT, "model": "up", "stream": True}, _bearer(OWNER))
            post("/v1/messages", {**CHAT, "model": "up"}, {"x-api-key": OWNER})
            assert upstream.requests, "the upstream was called"
            assert UPSTREAM in upstream.requests[-1].headers.get("authorization", "")  # the key did travel
        upstream.reset(Fault(chunks=4, cut_after=2))
        post("/v1/chat/completions", {**CHAT, "model": "up", "stream": True}, _bearer(OWNER))
        # And answers that succeed, so usage and audit rows of every kind exist.
        upstream.reset()
        post("/v1/chat/completions", {**CHAT, "model": "up"}, _bearer(OWNER))
        post("/v1/chat/completions", CHAT, _bearer(keys["tiny-only"]))
        post("/v1/chat/completions", {**CHAT, "stream": True}, _bearer(OWNER))
        got.append(client.get("/metrics", headers=_bearer(OWNER)))
    return got


def _settings(data_dir: Path, upstream: FaultServer) -> Any:
    providers = {
        "up": {
            "type": "openai",
            "base_url": f"{upstream.base_url}/v1",
            "api_key": UPSTREAM,
            "health_interval": 0,
            "timeout_first_token": 5.0,
        }
    }
    routes = {
        "up": {"targets": [{"provider": "up", "model": "m"}], "retries": 0},
        "paid": {"targets": [{"provider": "local", "model": TINY, "output_price": 1_000_000}]},
    }
    return make_settings(
        data_dir,
        api_key=OWNER,
        providers=providers,
        routes=routes,
        breaker={"failures": 1000, "window": 60, "cooldown": 1},
        max_request_bytes=1024 * 1024,
    )


def _make_keys(settings: Any) -> dict[str, str]:
    store = KeyStore(settings.database_path)
    try:
        return {
            "reader": store.create("reader", scopes=["models:read"])[1],
            "tiny-only": store.create("tiny-only", models=[TINY])[1],
            "limited": store.create("limited", rpm=1)[1],
            "tight": store.create("tight", tpm=10)[1],
            "broke": store.create("broke", budget=0)[1],
        }
    finally:
        store.close()


def _table_text(db: Path, table: str) -> str:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()  # table: one of two fixed names
    finally:
        conn.close()
    assert rows, f"no {table} rows: the check below would prove nothing"
    return "\n".join(repr(row) for row in rows)


def test_canary_keys_appear_in_no_log_metric_error_audit_or_usage_row(
    tmp_path: Path, tiny_model_path: Path, upstream: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx, httpcore and uvicorn's included
    settings = _settings(tmp_path / "data", upstream)
    keys = _make_keys(settings)
    canaries = [OWNER, UPSTREAM, WRONG, *keys.values()]
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:
        for name in ("uvicorn.access", "uvicorn.error"):  # the server set them to warning
            caplog.set_level(logging.DEBUG, logger=name)
        answers = _drive(live.base_url, upstream, keys)
        service.usage.flush()
        token_name = getattr(auth, "OWNER_TOKEN_FILE", None)  # the server's owner token, where it has one
        token_file = settings.data_dir / token_name if token_name else None
        if token_file is not None and token_file.exists():
            canaries.append(token_file.read_text().strip())
    finally:
        live.stop()
        service.close()

    statuses = {r.status_code for r in answers}
    assert {200, 400, 401, 403, 404, 413, 429} <= statuses and max(statuses) >= 500, statuses
    metrics = answers[-1].text
    assert "llmhost_http_requests_total" in metrics
    logs = caplog.text
    assert 'POST /v1/chat/completions HTTP/1.1" 401' in logs  # the access log was on
    json_lines = []
    for record in caplog.records:
        line = JsonFormatter().format(record)
        assert json.loads(line)["logger"] == record.name
        json_lines.append(line)
    places = {
        "log text": logs,
        "log records": "\n".join(r.getMessage() for r in caplog.records),
        "JSON log lines": "\n".join(json_lines),
        "metrics": metrics,
        "audit rows": _table_text(settings.audit_path, "audit"),
        "usage rows": _table_text(settings.database_path, "usage"),
    }
    for r in answers:
        where = f"response {r.request.method} {r.request.url.path} {r.status_code}"
        places[where] = r.text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items())
    for where, text in places.items():
        for canary in canaries:
            assert canary not in text, f"a secret in {where}"
    for path in sorted(settings.data_dir.rglob("*")):
        if path.is_file() and path.suffix != ".gguf" and path != token_file:
            raw = path.read_bytes()
            for canary in canaries:
                assert canary.encode() not in raw, f"a secret in {path.relative_to(settings.data_dir)}"


def test_the_session_watch_notes_a_secret_in_any_log_record_without_repeating_it() -> None:
    canary = "sk-canary-watch-" + os.urandom(8).hex()
    WATCH.add(canary)
    before = len(WATCH.leaks)
    try:
        try:
            raise ValueError(f"upstream said {canary}")
        except ValueError:
            logging.getLogger("llmhost.canary").debug("failed", exc_info=True)  # in the traceback only
        logging.getLogger("some.library").warning("key=%s", canary)
        noted = WATCH.leaks[before:]
        assert len(noted) == 2
        assert all("<secret>" in leak and canary not in leak for leak in noted)
        assert "test_the_session_watch_notes" in noted[0]  # names the test that logged it
    finally:
        del WATCH.leaks[before:]  # this test's leaks were on purpose: they must not fail the session
