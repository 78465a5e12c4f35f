"""Trust on the MCP door: keys and scopes over Streamable HTTP (missing, wrong, too narrow), the
``Origin`` check on every method of ``/mcp``, and proof that a policy and a rate limit set once for
the pipeline apply to MCP tool calls too."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import ErrorData, GetPromptResult

from llmhost.core.types import Principal
from tests.conftest import TINY, LiveServer
from tests.doors.mcp.helpers import call, run, structured, text_of

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _post(live: LiveServer, **headers: str) -> httpx.Response:
    return httpx.post(f"{live.base_url}/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers}, timeout=30)


def _keyed(live: LiveServer, scopes: list[str], **limits: int) -> str:
    service = live.service
    _, secret = service.keys.create(f"k{len(service.keys.list_keys())}", scopes=scopes, **limits)
    return str(secret)


def test_without_a_key_the_call_is_401_with_a_json_rpc_error(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    _keyed(live, ["inference"])  # a key exists: authentication is on
    refused = _post(live)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="llmhost"'  # RFC 6750: no key, no error
    body = refused.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None and body["error"]["code"] == -32600
    assert "API key" in body["error"]["message"]
    wrong = _post(live, Authorization="Bearer llmh_not-a-real-key")
    assert wrong.status_code == 401 and "Incorrect API key" in wrong.json()["error"]["message"]
    assert wrong.headers["www-authenticate"] == 'Bearer realm="llmhost", error="invalid_token"'
    assert httpx.get(f"{live.base_url}/mcp", headers=MCP_HEADERS).status_code == 401


def test_a_key_may_call_only_the_tools_its_scopes_allow(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    url = f"{live.base_url}/mcp"
    inference_only = _keyed(live, ["inference"])
    answer = structured(
        call(url, "complete", {"prompt": "hi", "max_tokens": 2, "temperature": 0}, key=inference_only)
    )
    assert answer["usage"]["completion_tokens"] == 2
    refused = call(url, "list_models", key=inference_only)
    assert refused.is_error and "lacks the 'models:read' scope" in text_of(refused)
    for tool, arguments in (
        ("load_model", {"model": TINY}),
        ("get_audit_logs", {}),
        ("run_security_audit", {}),
    ):
        assert call(url, tool, arguments, key=inference_only).is_error, tool
    reader = _keyed(live, ["models:read"])
    assert structured(call(url, "list_models", key=reader))["models"][0]["name"] == TINY
    refused = call(url, "complete", {"prompt": "hi", "max_tokens": 1}, key=reader)
    assert refused.is_error and "lacks the 'inference' scope" in text_of(refused)
    auditor = _keyed(live, ["audit"])
    entries = structured(call(url, "get_audit_logs", {"limit": 1000}, key=auditor))["entries"]
    denied = [e for e in entries if e["kind"] == "list_models" and e["status"] == 403]
    assert denied, "a refused tool call is audited too"


def test_a_key_limited_to_some_models_cannot_load_others(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    service = live.service
    _, secret = service.keys.create("narrow", scopes=["models:write", "inference"], models=["other-*"])
    result = call(f"{live.base_url}/mcp", "load_model", {"model": TINY}, key=secret)
    assert result.is_error and f"may not use model {TINY!r}" in text_of(result)
    _, reader = service.keys.create("narrow-reader", scopes=["models:read"], models=["other-*"])
    assert (
        structured(call(f"{live.base_url}/mcp", "list_models", key=reader))["models"] == []
    )  # as /v1/models


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_a_foreign_origin_is_refused_on_every_method(make_server, method: str) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    headers = {**MCP_HEADERS, "Origin": "https://evil.example"}
    response = httpx.request(
        method, f"{live.base_url}/mcp", headers=headers, json=INITIALIZE if method == "POST" else None
    )
    assert response.status_code == 403
    assert "evil.example" in response.json()["error"]["message"]
    same_origin = _post(live, Origin=f"http://127.0.0.1:{live.port}")  # the server's own pages
    assert same_origin.status_code == 200


def test_a_foreign_host_is_refused(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    response = _post(live, Host="rebound.example")
    assert response.status_code == 403 and "rebound.example" in response.json()["error"]["message"]


def test_the_pipeline_policy_applies_to_mcp_calls(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server(policy={"block": ["(?i)forbidden-topic"], "redact": ["email"]})
    url = f"{live.base_url}/mcp"
    blocked = call(url, "chat", {"messages": [{"role": "user", "content": "tell me about Forbidden-Topic"}]})
    assert blocked.is_error and "governance policy" in text_of(blocked)
    blocked = call(url, "validate_config", {"text": "# forbidden-topic\n"})  # an operation, not inference
    assert blocked.is_error and "governance policy" in text_of(blocked)
    # What a tool gives back is redacted like a model's answer: here a config key that is an address.
    verdict = structured(call(url, "validate_config", {"text": '[memory]\n"ops@example.com" = 1\n'}))
    paths = [p["path"] for p in verdict["problems"]]
    assert (
        paths and all("ops@example.com" not in p for p in paths) and "[REDACTED:email]" in json.dumps(paths)
    )


def test_a_rate_limit_applies_to_every_kind_of_tool_call(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    url = f"{live.base_url}/mcp"
    key = _keyed(live, ["inference", "models:read"], rpm=3)
    assert not call(url, "list_models", key=key).is_error  # an operation
    assert not call(url, "complete", {"prompt": "a", "max_tokens": 1}, key=key).is_error  # inference
    assert not call(url, "get_model_info", {"model": TINY}, key=key).is_error
    limited = call(url, "list_models", key=key)
    assert limited.is_error and "3 requests per minute" in text_of(limited)
    limited = call(url, "complete", {"prompt": "a", "max_tokens": 1}, key=key)
    assert limited.is_error and "rate limit" in text_of(limited)


def test_the_stdio_principal_is_the_one_the_server_was_built_for() -> None:
    """Without HTTP there is no request to carry a principal: the server's own one applies."""
    from llmhost.doors.mcp.gate import ToolGate

    narrow = Principal(name="k", key_id="k1", scopes=frozenset({"inference"}))
    gate = ToolGate(pipeline=None, specs={}, default=narrow)  # type: ignore[arg-type]

    class Ctx:
        request = None

    assert gate.principal_of(Ctx()) is narrow  # type: ignore[arg-type]


def _session(live: LiveServer, key: str) -> str:
    opened = _post(live, Authorization=f"Bearer {key}")
    assert opened.status_code == 200, opened.text
    return opened.headers["mcp-session-id"]


def test_a_session_answers_only_the_key_that_opened_it(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    a, b = _keyed(live, ["inference"]), _keyed(live, ["inference"])
    session = _session(live, a)
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}

    def send(key: str, method: str = "POST") -> httpx.Response:
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {key}", "Mcp-Session-Id": session}
        headers["MCP-Protocol-Version"] = "2025-11-25"
        body = json.dumps(ping) if method == "POST" else None
        return httpx.request(method, f"{live.base_url}/mcp", content=body, headers=headers, timeout=30)

    assert send(b).status_code == 404  # as if the session did not exist
    assert send(b, "DELETE").status_code == 404
    assert send(a).status_code == 200  # still open for its owner
    assert send(a, "DELETE").status_code == 200


def _error_of(call: Callable[[Client], Awaitable[object]]) -> Callable[[Client], Awaitable[object]]:
    """The JSON-RPC error the call ends with, as the SDK's client raises it (or what it returned)."""

    async def body(client: Client) -> object:
        try:
            return await call(client)
        except MCPError as exc:
            return exc.error

    return body


def test_unknown_tools_and_prompts_are_json_rpc_errors_with_code_32602(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    url = f"{live.base_url}/mcp"
    calls = (
        lambda c: c.call_tool("no_such_tool", {}),
        lambda c: c.get_prompt("no_such_prompt", {}),
        lambda c: c.get_prompt("summarize", {}),  # "text" is required
    )
    for call_ in calls:
        error = run(_error_of(call_), url)
        assert isinstance(error, ErrorData) and error.code == -32602, error


def test_a_prompt_that_lists_the_models_needs_models_read(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    url = f"{live.base_url}/mcp"
    inference_only, reader = _keyed(live, ["inference"]), _keyed(live, ["inference", "models:read"])

    def compare(c: Client) -> Awaitable[object]:
        return c.get_prompt("compare_models", {"question": "why?"})

    error = run(_error_of(compare), url, inference_only)
    assert isinstance(error, ErrorData) and error.code == -32010 and "models:read" in error.message
    got = run(_error_of(compare), url, reader)
    assert isinstance(got, GetPromptResult) and TINY in str(got.messages[0].content)
    summary = run(_error_of(lambda c: c.get_prompt("summarize", {"text": "x"})), url, inference_only)
    assert isinstance(summary, GetPromptResult)  # it lists nothing: any key may get it


def test_a_browser_client_may_read_the_session_id(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    origin = live.base_url  # the server's own origin is allowed
    opened = _post(live, Origin=origin)
    assert opened.status_code == 200, opened.text
    exposed = opened.headers.get("access-control-expose-headers", "").lower()
    assert "mcp-session-id" in exposed, opened.headers


def test_oauth_discovery_is_a_public_404(make_server) -> None:  # type: ignore[no-untyped-def]
    # After a 401, an MCP client looks for OAuth metadata; it must learn there is none, not get a 401.
    live = make_server()
    _keyed(live, ["inference"])  # a key exists: authentication is on
    for path in (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ):
        assert httpx.get(f"{live.base_url}{path}", timeout=10).status_code == 404, path
    assert _post(live).status_code == 401  # /mcp itself still needs the key
