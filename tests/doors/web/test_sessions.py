"""The dashboard's sessions and its admin JSON over plain HTTP (httpx, no browser): the cookie's flags,
cross-site request forgery with a cookie, a revoked key's session, the scopes of /api/status, /api/keys
and /api/audit/*, the page's and the assets' headers, and an open server that needs no login."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from llmhost.doors.web.routes import ASSETS
from llmhost.doors.web.sessions import COOKIE_NAME, SessionStore, cookie_token
from tests.conftest import LiveServer, ServerFactory
from tests.doors.web.conftest import Dashboard


def _login(d: Dashboard, secret: str) -> tuple[httpx.Response, str]:
    r = httpx.post(f"{d.live.base_url}/ui/login", json={"api_key": secret})
    assert r.status_code == 200, r.text
    token = cookie_token(r.headers["set-cookie"].split(";", 1)[0].encode())
    assert token is not None
    return r, token


def _bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def _cookie(token: str, origin: str | None = None) -> dict[str, str]:
    # httpx keeps Secure cookies for https only: the header is set by hand, as the browser sends it.
    headers = {"cookie": f"{COOKIE_NAME}={token}"}
    if origin is not None:
        headers["origin"] = origin
    return headers


# ----- the session store -------------------------------------------------------------------------------
def test_a_session_ends_after_its_idle_time() -> None:
    store = SessionStore(idle_seconds=0.05)
    token = store.create(b"llmh_secret")
    assert store.secret_for(token) == b"llmh_secret"
    time.sleep(0.1)
    assert store.secret_for(token) is None
    assert len(store) == 0


def test_using_a_session_restarts_its_idle_clock() -> None:
    store = SessionStore(idle_seconds=0.2)
    token = store.create(b"s")
    for _ in range(4):
        time.sleep(0.1)
        assert store.secret_for(token) == b"s"


def test_the_least_recently_used_session_goes_past_the_cap() -> None:
    store = SessionStore(max_sessions=2)
    first, second = store.create(b"1"), store.create(b"2")
    store.secret_for(first)  # now the most recently used
    third = store.create(b"3")
    assert store.secret_for(second) is None
    assert store.secret_for(first) == b"1" and store.secret_for(third) == b"3"


def test_a_session_prints_without_its_secret() -> None:
    store = SessionStore()
    store.create(b"llmh_do_not_print")
    assert "llmh_do_not_print" not in repr(store._sessions)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"llmhost_session=abc", "abc"),
        (b"theme=dark; llmhost_session=abc; other=1", "abc"),
        (b'llmhost_session="abc"', "abc"),
        (b"llmhost_sessionx=abc", None),
        (b"llmhost_session=", None),
        (b"", None),
    ],
)
def test_the_session_token_is_read_from_the_cookie_header(header: bytes, token: str | None) -> None:
    assert cookie_token(header) == token


# ----- logging in ---------------------------------------------------------------------------------------
def test_login_sets_an_http_only_strict_secure_cookie_holding_only_a_token(dashboard: Dashboard) -> None:
    r, token = _login(dashboard, dashboard.secret)
    cookie = r.headers["set-cookie"]
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/", "secure"} <= flags
    assert dashboard.secret not in cookie and len(token) >= 43
    assert r.json()["logged_in"] is True and r.json()["principal"] == "root"
    session = httpx.get(f"{dashboard.live.base_url}/ui/session", headers=_cookie(token)).json()
    assert session["logged_in"] and session["scopes"] == ["*"] and session["keys_required"]


def test_a_wrong_key_is_refused_and_gets_no_cookie(dashboard: Dashboard) -> None:
    r = httpx.post(f"{dashboard.live.base_url}/ui/login", json={"api_key": "llmh_wrong"})
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "Incorrect API key provided."
    assert "set-cookie" not in r.headers


def test_the_cookie_authenticates_api_calls_with_the_keys_scopes(dashboard: Dashboard) -> None:
    _, token = _login(dashboard, dashboard.key("reader", ["models:read"]))
    base = dashboard.live.base_url
    assert httpx.get(f"{base}/api/tags", headers=_cookie(token)).status_code == 200
    refused = httpx.get(f"{base}/api/usage", headers=_cookie(token))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    assert httpx.get(f"{base}/api/tags").status_code == 401  # no cookie, no key


def test_logout_ends_the_session(dashboard: Dashboard) -> None:
    _, token = _login(dashboard, dashboard.secret)
    base = dashboard.live.base_url
    r = httpx.post(f"{base}/ui/logout", headers=_cookie(token, base))
    assert r.status_code == 200 and f"{COOKIE_NAME}=" in r.headers["set-cookie"]
    after = httpx.get(f"{base}/v1/models", headers=_cookie(token))
    assert after.status_code == 401 and after.json()["error"]["code"] == "session_expired"
    assert httpx.get(f"{base}/ui/session", headers=_cookie(token)).json()["logged_in"] is False


def test_a_revoked_keys_session_is_refused_at_once(dashboard: Dashboard) -> None:
    _, token = _login(dashboard, dashboard.key("soon-revoked", ["models:read"]))
    base = dashboard.live.base_url
    assert httpx.get(f"{base}/api/tags", headers=_cookie(token)).status_code == 200
    dashboard.service.keys.revoke("soon-revoked")
    assert httpx.get(f"{base}/api/tags", headers=_cookie(token)).status_code == 401
    assert httpx.get(f"{base}/ui/session", headers=_cookie(token)).json()["logged_in"] is False


# ----- cross-site request forgery ----------------------------------------------------------------------
def test_a_state_changing_cookie_request_needs_this_servers_origin(dashboard: Dashboard) -> None:
    _, token = _login(dashboard, dashboard.secret)
    base = dashboard.live.base_url
    body = {"model": "no-such-model"}  # 404 once past the gate: nothing is unloaded
    missing = httpx.post(f"{base}/api/unload", json=body, headers=_cookie(token))
    assert missing.status_code == 403 and missing.json()["error"]["code"] == "origin_required"
    foreign = httpx.post(f"{base}/api/unload", json=body, headers=_cookie(token, "https://evil.example"))
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
    # Another allowed origin (a local dev server's page) is still not this server's own.
    local = httpx.post(f"{base}/api/unload", json=body, headers=_cookie(token, "http://localhost:3000"))
    assert local.status_code == 403 and local.json()["error"]["code"] == "origin_required"
    own = httpx.post(f"{base}/api/unload", json=body, headers=_cookie(token, base))
    assert own.status_code == 404, own.text
    # A key in a header is not exposed to forgery: no Origin needed, as before.
    keyed = httpx.post(f"{base}/api/unload", json=body, headers=_bearer(dashboard.secret))
    assert keyed.status_code == 404


def test_a_cookie_read_needs_no_origin(dashboard: Dashboard) -> None:
    _, token = _login(dashboard, dashboard.secret)
    assert httpx.get(f"{dashboard.live.base_url}/api/ps", headers=_cookie(token)).status_code == 200


# ----- the admin JSON ------------------------------------------------------------------------------------
def test_status_needs_the_metrics_scope_and_describes_the_loaded_models(dashboard: Dashboard) -> None:
    chatter = dashboard.key("chatter", ["inference"])
    assert dashboard.chat(chatter).status_code == 200
    refused = dashboard.get("/api/status", chatter)
    assert refused.status_code == 403
    watcher = dashboard.key("watcher", ["metrics"])
    status = dashboard.get("/api/status", watcher).json()
    (tiny,) = [m for m in status["models"] if m["name"] == "tiny"]
    assert tiny["slots"] == 2 and tiny["slots_busy"] == 0 and tiny["device"] == "cpu"
    assert tiny["requests"] >= 1 and tiny["generation_tokens"] >= 1 and tiny["ttft_mean_ms"] > 0
    assert status["memory"]["ram_used_bytes"] >= tiny["memory_bytes"] > 0
    assert status["memory"]["ram_budget_bytes"] > 0 and status["uptime_seconds"] >= 0
    (slow,) = status["breakers"]
    assert slow["route"] == "slow" and slow["breaker"] == "closed"


def test_keys_need_the_admin_scope_and_show_a_secret_only_once(dashboard: Dashboard) -> None:
    base = dashboard.live.base_url
    watcher = _bearer(dashboard.key("not-admin", ["metrics"]))
    assert httpx.get(f"{base}/api/keys", headers=watcher).status_code == 403
    admin = _bearer(dashboard.secret)
    made = httpx.post(
        f"{base}/api/keys",
        json={"name": "ci", "scopes": ["inference"], "rpm": 60, "expires": "30d"},
        headers=admin,
    )
    assert made.status_code == 200, made.text
    key = made.json()
    assert key["secret"].startswith("llmh_") and key["rpm"] == 60 and key["expires"] > time.time()
    assert dashboard.chat(key["secret"]).status_code == 200
    listed = httpx.get(f"{base}/api/keys", headers=admin).json()
    assert key["secret"] not in str(listed) and "inference" in listed["scopes"]
    (entry,) = [k for k in listed["data"] if k["id"] == key["id"]]
    assert entry["state"] == "active" and entry["secrets"][0].endswith("…")

    rotated = httpx.post(f"{base}/api/keys/{key['id']}/rotate", json={"grace": "0s"}, headers=admin).json()
    assert rotated["secret"] != key["secret"]
    assert dashboard.chat(key["secret"]).status_code == 401
    assert dashboard.chat(rotated["secret"]).status_code == 200

    revoked = httpx.post(f"{base}/api/keys/{key['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert dashboard.chat(rotated["secret"]).status_code == 401
    again = httpx.post(f"{base}/api/keys/{key['id']}/revoke", headers=admin)
    assert again.status_code == 409
    assert key["id"] not in str(httpx.get(f"{base}/api/keys", headers=admin).json())
    everything = httpx.get(f"{base}/api/keys", params={"all": "true"}, headers=admin).json()["data"]
    assert [k["state"] for k in everything if k["id"] == key["id"]] == ["revoked"]
    unknown = httpx.post(f"{base}/api/keys/key_nope/rotate", headers=admin)
    assert unknown.status_code == 404 and "key_nope" in unknown.json()["error"]["message"]


def test_a_bad_key_request_is_a_400_naming_the_field(dashboard: Dashboard) -> None:
    admin = _bearer(dashboard.secret)
    url = f"{dashboard.live.base_url}/api/keys"
    scope = httpx.post(url, json={"name": "x", "scopes": ["root"]}, headers=admin)
    assert scope.status_code == 400 and scope.json()["error"]["param"] == "scopes"
    expires = httpx.post(url, json={"name": "x", "expires": "soon"}, headers=admin)
    assert expires.status_code == 400 and expires.json()["error"]["param"] == "expires"
    policy = httpx.post(url, json={"name": "x", "policy": "strict"}, headers=admin)
    assert policy.status_code == 400 and "strict" in policy.json()["error"]["message"]


def test_audit_verify_and_recent_need_the_audit_scope(dashboard: Dashboard) -> None:
    base = dashboard.live.base_url
    assert dashboard.chat().status_code == 200
    chatter = _bearer(dashboard.key("no-audit", ["inference"]))
    assert httpx.get(f"{base}/api/audit/verify", headers=chatter).status_code == 403
    assert httpx.get(f"{base}/api/audit/recent", headers=chatter).status_code == 403
    auditor = _bearer(dashboard.key("auditor", ["audit"]))
    verdict = httpx.get(f"{base}/api/audit/verify", headers=auditor).json()
    assert verdict["ok"] and verdict["rows"] >= 1 and verdict["breaks"] == []
    assert re.fullmatch(r"\d+:[0-9a-f]{64}", verdict["head"])
    kept = httpx.get(f"{base}/api/audit/verify", params={"head": verdict["head"]}, headers=auditor).json()
    assert kept["ok"]
    bad = httpx.get(f"{base}/api/audit/verify", params={"head": "12"}, headers=auditor)
    assert bad.status_code == 400
    recent = httpx.get(f"{base}/api/audit/recent", params={"limit": 2}, headers=auditor).json()["data"]
    assert 1 <= len(recent) <= 2 and recent == sorted(recent, key=lambda r: r["seq"])
    assert recent[-1]["seq"] == int(verdict["head"].split(":")[0])


# ----- the page and its assets ---------------------------------------------------------------------------
def test_the_page_is_public_and_runs_only_its_own_scripts(dashboard: Dashboard) -> None:
    for path in ("/ui", "/ui/"):
        r = httpx.get(f"{dashboard.live.base_url}{path}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-cache"
        assert f"/ui/assets/{ASSETS.version}/app.js" in r.text
        assert "__ASSETS__" not in r.text and "http" not in r.text  # nothing from elsewhere


def test_assets_are_versioned_and_cached_for_a_year(dashboard: Dashboard) -> None:
    base = f"{dashboard.live.base_url}/ui/assets"
    r = httpx.get(f"{base}/{ASSETS.version}/app.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert "max-age=31536000" in r.headers["cache-control"] and "immutable" in r.headers["cache-control"]
    assert httpx.get(f"{base}/0000000000000000/app.js").status_code == 404
    assert httpx.get(f"{base}/{ASSETS.version}/nope.js").status_code == 404


def test_every_asset_is_package_data_and_imports_only_its_neighbours() -> None:
    static = Path(__file__).resolve().parents[3] / "llmhost" / "doors" / "web" / "static"
    names = {p.name for p in static.iterdir()}
    for path in static.glob("*.js"):
        for imported in re.findall(r'(?:from|import)\s*\(?\s*"([^"]+)"', path.read_text()):
            assert imported.removeprefix("./") in names, f"{path.name} imports {imported}"  # no CDN
    page = (static / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', page):
        assert ref.startswith("__ASSETS__/") and ref.removeprefix("__ASSETS__/") in names, ref
    css = (static / "app.css").read_text()
    assert "@import" not in css and "url(" not in css


def test_an_open_server_needs_no_login(make_server: ServerFactory) -> None:
    live: LiveServer = make_server()
    session = httpx.get(f"{live.base_url}/ui/session").json()
    assert session["keys_required"] is False and session["logged_in"] is False
    assert session["principal"] == "owner"
    r = httpx.post(f"{live.base_url}/ui/login", json={"api_key": "anything"})
    assert r.status_code == 200 and "set-cookie" not in r.headers
    assert httpx.get(f"{live.base_url}/api/status", timeout=10).status_code == 200


def test_the_cookie_is_secure_except_on_plain_http_to_a_network_name(make_server: ServerFactory) -> None:
    live: LiveServer = make_server(security={"allowed_hosts": ["llm.lan"]})
    secret = live.service.keys.create("lan", scopes=["*"])[1]
    url = f"{live.base_url}/ui/login"

    def flags(headers: dict[str, str]) -> set[str]:
        r = httpx.post(url, json={"api_key": secret}, headers=headers)
        assert r.status_code == 200, r.text
        return {part.strip().lower() for part in r.headers["set-cookie"].split(";")[1:]}

    assert "secure" in flags({})  # 127.0.0.1: browsers keep a Secure cookie on loopback
    plain = flags({"host": "llm.lan"})  # a browser would drop a Secure cookie here: no one could log in
    assert "secure" not in plain and {"httponly", "samesite=strict"} <= plain
    assert "secure" in flags({"host": "llm.lan", "x-forwarded-proto": "https"})  # behind a TLS proxy
