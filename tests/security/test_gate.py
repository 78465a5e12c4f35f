"""The HTTP gate: Host and Origin checks, CORS, the body limit, key auth and scopes on every door.

Each review finding of issue 12 that lives here has its test: text/plain CSRF, DNS rebinding, an empty
key on a public bind, docs/metrics left open, /ready echoing exceptions, chunked bodies over the limit.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from typer.testing import CliRunner

from llmhost.cli.main import app as cli_app
from llmhost.config import Settings
from llmhost.doors.http.app import _all_routes, create_app
from llmhost.doors.http.gate import HostPolicy
from llmhost.doors.http.scopes import required_scope
from llmhost.errors import ConfigError
from llmhost.security.keys import KeyStore
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.security.helpers import make_key as _key

CHAT = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def keyed(tmp_path: Path, tiny_model_path: Path) -> Iterator[tuple[LiveServer, Settings]]:
    settings = make_settings(tmp_path / "data")
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    yield live, settings
    live.stop()
    service.close()


def _auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


# ----- browser safety --------------------------------------------------------------------------------
def test_a_cross_site_text_plain_post_is_refused(server: LiveServer) -> None:
    # What a <form enctype="text/plain"> or fetch(..., {mode: "no-cors"}) on another site sends.
    r = httpx.post(
        f"{server.base_url}/api/unload",
        content=b'{"model": "tiny", "force": true}',
        headers={"content-type": "text/plain", "origin": "https://evil.example", "sec-fetch-mode": "no-cors"},
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "origin_not_allowed"


def test_a_browser_text_plain_body_is_not_read_as_json(server: LiveServer) -> None:
    # Even from an allowed origin, a body the browser declared as text is not taken for JSON.
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=httpx.Request("POST", "/", json=CHAT).content,
        headers={"content-type": "text/plain", "origin": "http://localhost:3000", "sec-fetch-mode": "cors"},
    )
    assert 400 <= r.status_code < 500 and r.status_code != 403


def test_curl_with_a_form_content_type_still_works(server: LiveServer) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=httpx.Request("POST", "/", json=CHAT).content,
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_a_foreign_host_header_is_refused_against_dns_rebinding(server: LiveServer) -> None:
    r = httpx.get(f"{server.base_url}/v1/models", headers={"host": "rebind.evil.example:8080"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "host_not_allowed"
    assert (
        httpx.get(f"{server.base_url}/v1/models", headers={"host": f"localhost:{server.port}"}).status_code
        == 200
    )


def test_allowed_hosts_admit_a_configured_name(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "d", security={"allowed_hosts": ["*.lan"]})
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:
        assert httpx.get(f"{live.base_url}/v1/models", headers={"host": "box.lan"}).status_code == 200
        assert httpx.get(f"{live.base_url}/v1/models", headers={"host": "box.wan"}).status_code == 403
    finally:
        live.stop()
        service.close()


def test_host_policy() -> None:
    loop = HostPolicy("127.0.0.1", [])
    assert loop.allows("127.0.0.1:8080") and loop.allows("localhost") and loop.allows("[::1]:80")
    assert loop.allows("app.localhost:1") and loop.allows(socket.gethostname())
    assert not loop.allows("10.0.0.5:8080") and not loop.allows("evil.example") and not loop.allows("")
    wild = HostPolicy("0.0.0.0", [])
    assert wild.allows("10.0.0.5:8080") and not wild.allows("evil.example")


def test_cors_answers_allowed_origins_only(server: LiveServer) -> None:
    pre = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    ok = httpx.options(
        f"{server.base_url}/v1/chat/completions", headers={**pre, "origin": "http://localhost:3000"}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    bad = httpx.options(
        f"{server.base_url}/v1/chat/completions", headers={**pre, "origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in bad.headers
    get = httpx.get(f"{server.base_url}/v1/models", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in get.headers


# ----- the body limit --------------------------------------------------------------------------------
def test_a_chunked_body_over_the_limit_gets_413(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "d", max_request_bytes=4096)
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:

        def chunks() -> Iterator[bytes]:
            yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}]}'

        r = httpx.post(
            f"{live.base_url}/v1/chat/completions",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "request_too_large"
        r = httpx.post(f"{live.base_url}/api/chat", content=chunks())
        assert r.status_code == 413 and "error" in r.json()
    finally:
        live.stop()
        service.close()


# ----- a public bind needs a key ---------------------------------------------------------------------
def test_an_empty_api_key_on_a_public_bind_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMHOST_API_KEY", "")
    monkeypatch.setenv("LLMHOST_DATA_DIR", str(tmp_path / "d"))
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--no-model"])
    assert result.exit_code != 0
    assert "refusing to bind 0.0.0.0 without an API key" in result.output
    settings = make_settings(tmp_path / "d2", host="0.0.0.0", api_key="")
    assert settings.api_key is None
    with pytest.raises(ConfigError, match="without an API key"):
        create_app(settings)


def test_a_public_bind_with_a_created_key_starts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", host="0.0.0.0", default_model="")
    _key(settings, "ops")
    create_app(settings)  # no ConfigError


# ----- what a key opens -------------------------------------------------------------------------------
def test_docs_and_metrics_are_closed_once_a_key_exists(keyed: tuple[LiveServer, Settings]) -> None:
    live, settings = keyed
    assert httpx.get(f"{live.base_url}/openapi.json").status_code == 200  # no key yet: open on loopback
    secret = _key(settings, "reader")
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics", "/v1/models"):
        assert httpx.get(f"{live.base_url}{path}").status_code == 401, path
    assert httpx.get(f"{live.base_url}/openapi.json", headers=_auth(secret)).status_code == 200
    assert httpx.get(f"{live.base_url}/metrics", headers=_auth(secret)).status_code == 403  # no metrics scope
    metrics_key = _key(settings, "prometheus", scopes=["metrics"])
    assert httpx.get(f"{live.base_url}/metrics", headers=_auth(metrics_key)).status_code == 200
    assert httpx.get(f"{live.base_url}/health").status_code == 200
    assert httpx.get(f"{live.base_url}/ready").status_code == 200


def test_scopes_gate_each_kind_of_route(keyed: tuple[LiveServer, Settings]) -> None:
    live, settings = keyed
    infer = _auth(_key(settings, "app", scopes=["inference"]))
    reader = _auth(_key(settings, "dash", scopes=["models:read"]))
    base = live.base_url
    assert httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=infer, timeout=30).status_code == 200
    assert httpx.get(f"{base}/v1/models", headers=infer).status_code == 403
    assert httpx.get(f"{base}/v1/models", headers=reader).status_code == 200
    assert httpx.get(f"{base}/api/tags", headers=reader).status_code == 200
    denied = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=reader)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "insufficient_scope"
    for method, path in (
        ("POST", "/api/pull"),
        ("POST", "/api/unload"),
        ("GET", "/api/usage"),
        ("GET", "/metrics"),
    ):
        assert httpx.request(method, f"{base}{path}", json={}, headers=infer).status_code == 403, path


def test_a_key_with_a_model_allowlist_is_refused_other_models_on_every_door(
    keyed: tuple[LiveServer, Settings],
) -> None:
    live, settings = keyed
    secret = _key(settings, "narrow", models=["gemma*"])
    base = live.base_url
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0).chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic.Anthropic(base_url=base, api_key=secret, max_retries=0).messages.create(
            model=TINY, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=base, headers=_auth(secret)).chat(
            model=TINY, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 403
    r = httpx.post(f"{base}/v1/responses", json={"model": TINY, "input": "hi"}, headers=_auth(secret))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    wide = _key(settings, "wide", models=["ti*"])
    out = openai.OpenAI(base_url=f"{base}/v1", api_key=wide, max_retries=0).chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert out.choices


def test_a_key_with_a_model_allowlist_sees_only_those_models(keyed: tuple[LiveServer, Settings]) -> None:
    # As OpenAI lists and retrieves only what a key has access to (404 for the rest).
    live, settings = keyed
    base = live.base_url
    narrow = _key(settings, "narrow-reader", models=["gemma*"], scopes=["models:read", "inference"])
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=narrow, max_retries=0)
    assert TINY not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(TINY)
    tags = httpx.get(f"{base}/api/tags", headers=_auth(narrow)).json()["models"]
    assert TINY not in [m["name"] for m in tags]
    shown = httpx.post(f"{base}/api/show", json={"model": TINY}, headers=_auth(narrow))
    assert shown.status_code == 404
    wide = _key(settings, "wide-reader", models=["ti*"], scopes=["models:read"])
    assert TINY in [m.id for m in openai.OpenAI(base_url=f"{base}/v1", api_key=wide).models.list()]
    assert httpx.post(f"{base}/api/show", json={"model": TINY}, headers=_auth(wide)).status_code == 200


def test_ollama_load_and_unload_by_an_empty_request_keep_the_keys_model_rules(
    keyed: tuple[LiveServer, Settings],
) -> None:
    # An empty /api/generate, /api/chat, /api/embed or /api/embeddings loads (or with keep_alive 0
    # unloads) a model: the same scope and model rules as a prompt, not a way around them.
    live, settings = keyed
    base = live.base_url
    narrow = ollama.Client(host=base, headers=_auth(_key(settings, "narrow", models=["gemma*"])))
    calls = (
        lambda c: c.generate(model=TINY, keep_alive=-1),
        lambda c: c.generate(model=TINY, keep_alive=0),
        lambda c: c.chat(model=TINY, messages=[], keep_alive=0),
        lambda c: c.embed(model=TINY, input=[]),
        lambda c: c.embeddings(model=TINY, prompt=""),
    )
    for call in calls:
        with pytest.raises(ollama.ResponseError) as info:
            call(narrow)
        assert info.value.status_code == 403 and "may not use model" in str(info.value)
    allowed = ollama.Client(host=base, headers=_auth(_key(settings, "wide", models=["ti*"])))
    assert allowed.generate(model=TINY, keep_alive=-1).done_reason == "load"
    assert allowed.chat(model=TINY, messages=[], keep_alive=0).done_reason == "unload"


def test_a_revoked_key_fails_on_its_next_request(keyed: tuple[LiveServer, Settings]) -> None:
    live, settings = keyed
    secret = _key(settings, "temp")
    assert httpx.get(f"{live.base_url}/api/tags", headers=_auth(secret)).status_code == 200
    store = KeyStore(settings.database_path)
    store.revoke("temp")
    store.close()
    assert httpx.get(f"{live.base_url}/api/tags", headers=_auth(secret)).status_code == 401
    x = httpx.get(f"{live.base_url}/v1/models", headers={"x-api-key": secret})
    assert x.status_code == 401
    assert httpx.get(f"{live.base_url}/api/tags").status_code == 401  # no key at all: still closed


def test_usage_rows_name_the_key_id_never_the_secret(keyed: tuple[LiveServer, Settings]) -> None:
    live, settings = keyed
    secret = _key(settings, "billing")
    r = httpx.post(f"{live.base_url}/v1/chat/completions", json=CHAT, headers=_auth(secret), timeout=30)
    assert r.status_code == 200
    store = KeyStore(settings.database_path)
    key_id = store.get("billing").id
    store.close()
    admin = _auth(_key(settings, "root", scopes=["*"]))
    rows = httpx.get(f"{live.base_url}/api/usage", params={"by": "key"}, headers=admin).json()
    assert secret not in str(rows)
    assert key_id in str(rows), rows


def test_every_route_has_an_explicit_scope(server: LiveServer) -> None:
    app = server.server.config.app
    admin_paths = {
        "/api/providers",
        "/api/usage",
        "/api/keys",
        "/api/keys/{key_id}/revoke",
        "/api/keys/{key_id}/rotate",
    }
    for route in _all_routes(app.router.routes):
        methods = getattr(route, "methods", None) or {"GET"}
        path = getattr(route, "path", "")
        sample = path.replace("{model:path}", "m").replace("{response_id}", "resp_1")
        for method in methods - {"HEAD"}:
            scope = required_scope(method, sample)
            assert scope != "admin" or sample in admin_paths, f"{method} {path} has no scope entry"


def test_ready_does_not_echo_exception_text(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", default_model="no-such-model-secret-path")
    live = LiveServer(create_app(settings)).start(wait_ready=False)
    try:
        deadline = 50
        r = httpx.get(f"{live.base_url}/ready")
        while r.status_code == 503 and "loading" in r.text and deadline:
            deadline -= 1
            time.sleep(0.1)
            r = httpx.get(f"{live.base_url}/ready")
        assert r.status_code == 503
        assert "no-such-model-secret-path" not in r.text
        assert "startup failed" in r.text
    finally:
        live.stop()


def test_a_stored_response_belongs_to_the_key_that_made_it(keyed: tuple[LiveServer, Settings]) -> None:
    live, settings = keyed
    alice, bob = _auth(_key(settings, "alice")), _auth(_key(settings, "bob"))
    base = live.base_url
    made = httpx.post(
        f"{base}/v1/responses",
        json={"model": TINY, "input": "hi", "max_output_tokens": 2},
        headers=alice,
        timeout=60,
    )
    rid = made.json()["id"]
    assert httpx.get(f"{base}/v1/responses/{rid}", headers=alice).status_code == 200
    assert httpx.get(f"{base}/v1/responses/{rid}", headers=bob).status_code == 404
    assert httpx.get(f"{base}/v1/responses/{rid}/input_items", headers=bob).status_code == 404
    count = {"model": TINY, "input": "more", "previous_response_id": rid}
    counted = httpx.post(f"{base}/v1/responses/input_tokens", json=count, headers=alice, timeout=60)
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0  # the owner counts its own
    assert httpx.post(f"{base}/v1/responses/input_tokens", json=count, headers=bob).status_code == 404
    follow = {"model": TINY, "input": "more", "previous_response_id": rid, "max_output_tokens": 2}
    assert httpx.post(f"{base}/v1/responses", json=follow, headers=bob, timeout=60).status_code == 404
    assert httpx.delete(f"{base}/v1/responses/{rid}", headers=bob).status_code == 404
    # A new key that takes a revoked key's name does not inherit its conversations.
    store = KeyStore(settings.database_path)
    store.revoke("alice")
    store.close()
    heir = _auth(_key(settings, "alice"))
    assert httpx.get(f"{base}/v1/responses/{rid}", headers=heir).status_code == 404


def test_the_cli_asks_its_own_server_with_the_owner_token(
    keyed: tuple[LiveServer, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, settings = keyed
    _key(settings, "someone")  # auth is on now, and the CLI holds no key
    token_file = settings.data_dir / ".owner-token"
    assert token_file.stat().st_mode & 0o077 == 0  # only the server's user can read it
    monkeypatch.setenv("LLMHOST_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LLMHOST_PORT", str(live.port))
    ps = CliRunner().invoke(cli_app, ["ps"])
    assert ps.exit_code == 0 and TINY in ps.output, ps.output
    rm = CliRunner().invoke(cli_app, ["rm", TINY])
    assert rm.exit_code != 0 and "in use by the running server" in rm.output
    token_file.write_text("llmo_wrong")
    refused = CliRunner().invoke(cli_app, ["rm", TINY])
    assert refused.exit_code != 0 and "refused the CLI" in refused.output
    assert httpx.get(f"{live.base_url}/api/ps", headers=_auth("llmo_wrong")).status_code == 401
