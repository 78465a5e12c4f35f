"""Agents over HTTP against a live server on the tiny model: CRUD and its refusals, chatting with an
agent from every dialect, the server-run tool loop (llmhost's own MCP tools in-process, and a remote
MCP server over Streamable HTTP), caller-run tools, runs, feedback and scorecards."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import ollama
import pytest

from llmhost.config import PolicySettings
from tests.conftest import TINY, LiveServer, ServerFactory
from tests.security.helpers import make_key

# Greedy, and never the tiny model's end-of-text token: answers run to max_tokens, whatever it says.
NO_EOS = {"temperature": 0, "logit_bias": {"2": -100}}
# Tool calls need the end-of-text token: a grammar-forced call ends with it.
GREEDY = {"temperature": 0, "logit_bias": {}}


def _agent(name: str = "helper", **fields: Any) -> dict[str, Any]:
    return {"name": name, "model": TINY, "system": "You are terse.", "sampling": {"max_tokens": 4}, **fields}


def _chat(base: str, model: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **NO_EOS, **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers or {}, timeout=60)


# A tool-using agent's prompt describes its tools: thousands of the tiny model's byte tokens.
BIG = {"engine": {"n_ctx": 8192, "n_parallel": 2}}


@pytest.fixture
def live(server: LiveServer) -> LiveServer:
    return server


@pytest.fixture
def roomy(make_server: ServerFactory) -> LiveServer:
    return make_server(**BIG)


# ----- CRUD ------------------------------------------------------------------------------------------
def test_create_list_get_replace_delete(live: LiveServer) -> None:
    base = live.base_url
    made = httpx.post(f"{base}/v1/agents", json=_agent(description="d"))
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["object"] == "agent" and body["name"] == "helper" and body["max_steps"] == 4
    assert [a["name"] for a in httpx.get(f"{base}/v1/agents").json()["data"]] == ["helper"]
    changed = httpx.put(f"{base}/v1/agents/helper", json=_agent(system="You are verbose."))
    assert changed.status_code == 200 and changed.json()["system"] == "You are verbose."
    assert httpx.get(f"{base}/v1/agents/helper").json()["system"] == "You are verbose."
    assert httpx.delete(f"{base}/v1/agents/helper").json() == {
        "object": "agent",
        "name": "helper",
        "deleted": True,
    }
    gone = httpx.get(f"{base}/v1/agents/helper")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "agent_not_found"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (_agent(model="no-such-model"), 400, "model"),
        (_agent(name=TINY), 409, None),  # would shadow the model
        (_agent(policy="nope"), 400, "policy"),
        (_agent(tool_groups=["nope"]), 400, "tool_groups"),
        (_agent(scope="nope"), 400, "scope"),
        (_agent(tool_choice="ghost"), 400, "tool_choice"),
        (_agent(name="bad name!"), 400, "name"),
        (_agent(colour="blue"), 400, None),
        (_agent(max_steps=0), 400, "max_steps"),
        (_agent(datasets=["nope"]), 400, "datasets"),
        (_agent(tools=[{"type": "function", "function": {"name": "x y"}}]), 400, None),
        (_agent(mcp_servers=[{"name": "m", "url": "ftp://x"}]), 400, None),
    ],
)
def test_bad_agents_are_refused_in_the_openai_envelope(
    live: LiveServer, body: dict[str, Any], status: int, param: str | None
) -> None:
    r = httpx.post(f"{live.base_url}/v1/agents", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if param is not None:
        assert param in (error.get("param") or "") or param in error["message"]
    assert httpx.get(f"{live.base_url}/v1/agents").json()["data"] == []  # nothing stored


def test_a_second_agent_of_the_same_name_is_a_conflict(live: LiveServer) -> None:
    assert httpx.post(f"{live.base_url}/v1/agents", json=_agent()).status_code == 200
    r = httpx.post(f"{live.base_url}/v1/agents", json=_agent())
    assert r.status_code == 409
    put = httpx.put(f"{live.base_url}/v1/agents/other", json=_agent(name="other"))
    assert put.status_code == 404
    mismatch = httpx.put(f"{live.base_url}/v1/agents/helper", json=_agent(name="other"))
    assert mismatch.status_code == 400


def test_agent_routes_need_their_scopes(make_server: ServerFactory) -> None:
    live = make_server()
    settings = live.server.config.app.state.service.settings
    reader = {"authorization": f"Bearer {make_key(settings, 'reader', scopes=['inference', 'agents:read'])}"}
    writer = {
        "authorization": f"Bearer {make_key(settings, 'writer', scopes=['agents:write', 'agents:read'])}"
    }
    assert httpx.post(f"{live.base_url}/v1/agents", json=_agent(), headers=reader).status_code == 403
    assert httpx.post(f"{live.base_url}/v1/agents", json=_agent(), headers=writer).status_code == 200
    assert httpx.get(f"{live.base_url}/v1/agents", headers=reader).status_code == 200
    assert httpx.delete(f"{live.base_url}/v1/agents/helper", headers=reader).status_code == 403


# ----- chatting with an agent ------------------------------------------------------------------------
def test_an_agent_answers_under_its_name_and_its_run_is_recorded(live: LiveServer) -> None:
    base = live.base_url
    httpx.post(f"{base}/v1/agents", json=_agent()).raise_for_status()
    plain = _chat(base, TINY)
    r = _chat(base, "helper")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "helper"
    run_id = r.headers["x-llmhost-run-id"]
    assert run_id == r.headers["x-request-id"]
    # The agent's system prompt went in front: more prompt tokens than the bare question.
    assert r.json()["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"]
    # Its sampling default applied (max_tokens 4) where the request set none.
    assert r.json()["usage"]["completion_tokens"] == 4
    runs = httpx.get(f"{base}/v1/agents/helper/runs").json()["data"]
    assert [x["id"] for x in runs] == [run_id]
    run = runs[0]
    assert (
        run["agent"] == "helper"
        and run["model"] == TINY
        and run["status"] == "ok"
        and run["door"] == "openai"
    )
    assert run["prompt_tokens"] > 0 and run["completion_tokens"] == 4 and run["latency_ms"] > 0
    one = httpx.get(f"{base}/v1/agents/helper/runs/{run_id}")
    assert one.status_code == 200 and one.json()["id"] == run_id
    assert httpx.get(f"{base}/v1/agents/helper/runs/nope").status_code == 404


def test_every_dialect_reaches_the_agent(live: LiveServer, openai_client: Any) -> None:
    base = live.base_url
    httpx.post(f"{base}/v1/agents", json=_agent()).raise_for_status()
    claude = anthropic.Anthropic(base_url=base, api_key="x", max_retries=0)
    message = claude.messages.create(
        model="helper", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.model == "helper" and message.usage.input_tokens > 0
    answer = ollama.Client(host=base).chat(
        model="helper",
        messages=[{"role": "user", "content": "hi"}],
        options={"num_predict": 3, "temperature": 0},
    )
    assert answer.message.role == "assistant"
    resp = httpx.post(f"{base}/v1/responses", json={"model": "helper", "input": "hi", "max_output_tokens": 3})
    assert resp.status_code == 200, resp.text
    streamed = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "helper", "messages": [{"role": "user", "content": "hi"}], "stream": True, **NO_EOS},
        timeout=60,
    )
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    # The model lists of both catalogs show the agent, as Open WebUI and ollama list reads them.
    assert "helper" in [m.id for m in openai_client(live).models.list()]
    assert "helper" in [m.model for m in ollama.Client(host=base).list().models]
    assert ollama.Client(host=base).show("helper").capabilities
    doors = sorted(r["door"] for r in httpx.get(f"{base}/v1/agents/helper/runs").json()["data"])
    assert doors == ["anthropic", "ollama", "openai", "responses"]


def test_an_agent_runs_plain_completions_and_refuses_callers_without_its_scope(
    make_server: ServerFactory,
) -> None:
    live = make_server()
    settings = live.server.config.app.state.service.settings
    admin = {"authorization": f"Bearer {make_key(settings, 'root', scopes=['*'])}"}
    httpx.post(f"{live.base_url}/v1/agents", json=_agent(scope="admin"), headers=admin).raise_for_status()
    user = {"authorization": f"Bearer {make_key(settings, 'user', scopes=['inference'])}"}
    refused = _chat(live.base_url, "helper", headers=user)
    assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
    assert _chat(live.base_url, "helper", headers=admin).status_code == 200
    # A raw prompt runs on the agent's model (with its sampling defaults where the request sets none),
    # without its system prompt: the same prompt tokens as the model's own.
    body = {"model": "helper", "prompt": "hi", "max_tokens": 3, **NO_EOS}
    completion = httpx.post(f"{live.base_url}/v1/completions", json=body, headers=admin)
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 3
    plain = httpx.post(f"{live.base_url}/v1/completions", json={**body, "model": TINY}, headers=admin)
    assert completion.json()["usage"]["prompt_tokens"] == plain.json()["usage"]["prompt_tokens"]
    refused = httpx.post(f"{live.base_url}/v1/completions", json=body, headers=user)
    assert refused.status_code == 403


def test_the_callers_system_prompt_joins_the_agents_in_one_turn(make_server: ServerFactory) -> None:
    live = make_server()
    httpx.post(f"{live.base_url}/v1/agents", json=_agent()).raise_for_status()
    system: Any = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}]
    both = _chat(live.base_url, "helper", messages=system)
    assert both.status_code == 200, both.text
    alone = _chat(live.base_url, "helper", messages=[{"role": "user", "content": "hi"}])
    assert both.json()["usage"]["prompt_tokens"] > alone.json()["usage"]["prompt_tokens"]


def test_an_agents_policy_applies_and_shows_in_its_scorecard(make_server: ServerFactory) -> None:
    live = make_server(policies={"strict": PolicySettings(redact=["email"])})
    base = live.base_url
    httpx.post(f"{base}/v1/agents", json=_agent(policy="strict")).raise_for_status()
    body = {
        "model": "helper",
        "messages": [{"role": "user", "content": "mail me at a@example.com"}],
        **NO_EOS,
    }
    assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).status_code == 200
    assert _chat(base, "helper").status_code == 200
    run = httpx.get(f"{base}/v1/agents/helper/runs").json()["data"]
    decisions = [x["policy"] for x in run]
    assert any(d and d[0]["rule"] == "email" for d in decisions), decisions
    card = httpx.get(f"{base}/v1/agents/helper/scorecard").json()
    assert card["requests"] == 2 and card["policy_compliance"] == 0.5


# ----- tools -----------------------------------------------------------------------------------------
def test_the_server_runs_llmhosts_own_tools_in_the_loop(roomy: LiveServer) -> None:
    live = roomy
    base = live.base_url
    spec = _agent(
        tool_groups=["models"], tool_choice="list_models", max_steps=3, sampling={"max_tokens": 120}
    )
    httpx.post(f"{base}/v1/agents", json=spec).raise_for_status()
    r = _chat(base, "helper", **GREEDY)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert not choice["message"].get("tool_calls")  # the server ran it; the caller gets the answer
    run = httpx.get(f"{base}/v1/agents/helper/runs").json()["data"][0]
    assert [c["name"] for c in run["tool_calls"]][:1] == ["list_models"]
    assert run["tool_calls"][0]["ok"] is True, run["tool_calls"]
    assert len(run["steps"]) >= 2 and run["steps"][0]["tool_calls"][0] == "list_models"
    assert len(run["steps"]) <= 3  # max_steps
    # The tool call went through the MCP gate: the audit log has it as an operation.
    audit = httpx.get(f"{base}/api/audit", params={"limit": 1000}).json()["data"]
    assert any(a["kind"] == "list_models" or "list_models" in a["kind"] for a in audit), [
        a["kind"] for a in audit
    ]


def test_a_streamed_agent_run_keeps_the_tool_steps_inside(roomy: LiveServer) -> None:
    live = roomy
    base = live.base_url
    spec = _agent(
        tool_groups=["models"], tool_choice="list_models", max_steps=2, sampling={"max_tokens": 120}
    )
    httpx.post(f"{base}/v1/agents", json=spec).raise_for_status()
    body = {
        "model": "helper",
        "messages": [{"role": "user", "content": "which models?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **GREEDY,
    }
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert len(finishes) == 1  # one finish: the last step's
    assert not any(c["delta"].get("tool_calls") for e in events for c in e["choices"])
    usage = events[-1]["usage"]
    run = httpx.get(f"{base}/v1/agents/helper/runs").json()["data"][0]
    assert run["stream"] is True and run["tool_calls"][0]["name"] == "list_models"
    assert usage["completion_tokens"] == sum(s["completion_tokens"] for s in run["steps"])


def test_the_server_calls_a_remote_mcp_server(make_server: ServerFactory) -> None:
    tools_host = make_server()  # another llmhost, as a remote MCP server
    live = make_server(**BIG)
    spec = _agent(
        mcp_servers=[{"name": "other", "url": f"{tools_host.base_url}/mcp", "tools": ["list_models"]}],
        tool_choice="other_list_models",
        max_steps=2,
        sampling={"max_tokens": 120},
    )
    httpx.post(f"{live.base_url}/v1/agents", json=spec).raise_for_status()
    r = _chat(live.base_url, "helper", **GREEDY)
    assert r.status_code == 200, r.text
    run = httpx.get(f"{live.base_url}/v1/agents/helper/runs").json()["data"][0]
    call = run["tool_calls"][0]
    assert call["name"] == "other_list_models" and call["ok"] is True, call
    audit = httpx.get(f"{live.base_url}/api/audit", params={"limit": 1000}).json()["data"]
    assert any(a["kind"] == "mcp:other/list_models" for a in audit), [a["kind"] for a in audit]


def test_an_unreachable_mcp_server_is_a_clear_error(live: LiveServer) -> None:
    spec = _agent(mcp_servers=[{"name": "gone", "url": "http://127.0.0.1:9/mcp"}])
    httpx.post(f"{live.base_url}/v1/agents", json=spec).raise_for_status()
    r = _chat(live.base_url, "helper")
    assert r.status_code == 400 and "gone" in r.json()["error"]["message"]


def test_a_caller_run_tool_comes_back_to_the_caller(roomy: LiveServer) -> None:
    live = roomy
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                "required": ["city"],
            },
        },
    }
    spec = _agent(tools=[weather], tool_choice="get_weather", sampling={"max_tokens": 200})
    httpx.post(f"{live.base_url}/v1/agents", json=spec).raise_for_status()
    r = _chat(live.base_url, "helper", parallel_tool_calls=False, **GREEDY)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    run = httpx.get(f"{live.base_url}/v1/agents/helper/runs").json()["data"][0]
    assert run["tool_calls"][0]["name"] == "get_weather" and run["tool_calls"][0].get("caller") is True


# ----- feedback and scorecards -----------------------------------------------------------------------
def test_feedback_and_scorecards(make_server: ServerFactory) -> None:
    live = make_server()
    base = live.base_url
    settings = live.server.config.app.state.service.settings
    scopes = ["inference", "agents:read", "agents:write"]
    alice = {"authorization": f"Bearer {make_key(settings, 'alice', scopes=scopes)}"}
    bob = {"authorization": f"Bearer {make_key(settings, 'bob', scopes=['inference'])}"}
    httpx.post(f"{base}/v1/agents", json=_agent(), headers=alice).raise_for_status()
    runs = [_chat(base, "helper", headers=alice).headers["x-llmhost-run-id"] for _ in range(3)]
    plain = _chat(base, TINY, headers=alice).headers["x-llmhost-run-id"]
    up = httpx.post(
        f"{base}/v1/feedback", json={"run_id": runs[0], "thumbs": "up", "rating": 5}, headers=alice
    )
    assert up.status_code == 200, up.text
    assert up.json()["agent"] == "helper"
    again = {"request_id": runs[0], "thumbs": "down", "rating": 2}
    assert httpx.post(f"{base}/v1/feedback", json=again, headers=alice).status_code == 200  # replaces
    httpx.post(f"{base}/v1/feedback", json={"run_id": runs[1], "rating": 4}, headers=alice).raise_for_status()
    httpx.post(
        f"{base}/v1/feedback", json={"run_id": plain, "thumbs": "up"}, headers=alice
    ).raise_for_status()
    # Someone else's run, an unknown one, and empty feedback are refused.
    assert (
        httpx.post(f"{base}/v1/feedback", json={"run_id": runs[2], "thumbs": "up"}, headers=bob).status_code
        == 404
    )
    assert (
        httpx.post(f"{base}/v1/feedback", json={"run_id": "nope", "thumbs": "up"}, headers=alice).status_code
        == 404
    )
    assert httpx.post(f"{base}/v1/feedback", json={"run_id": runs[2]}, headers=alice).status_code == 400
    assert (
        httpx.post(f"{base}/v1/feedback", json={"run_id": runs[2], "rating": 9}, headers=alice).status_code
        == 400
    )
    card = httpx.get(f"{base}/v1/agents/helper/scorecard", params={"days": 1}, headers=alice).json()
    assert card["object"] == "scorecard" and card["subject"] == {"agent": "helper"}
    assert card["requests"] == 3 and card["success_rate"] == 1.0 and card["error_rate"] == 0.0
    assert card["latency_ms"]["p50"] > 0 and card["latency_ms"]["p95"] >= card["latency_ms"]["p50"]
    assert card["tokens"]["completion"] == 12 and card["policy_compliance"] == 1.0
    assert card["tool_calls"] == {"total": 0, "succeeded": 0, "success_rate": None}
    assert card["retrieval"] == {"runs_with_retrieval": 0, "rate": 0.0}
    assert card["feedback"] == {"up": 0, "down": 1, "ratings": 2, "mean_rating": 3.0}
    model = httpx.get(f"{base}/v1/scorecards", params={"model": TINY}, headers=alice).json()
    assert model["subject"] == {"model": TINY} and model["requests"] == 4 and model["feedback"]["up"] == 1
    assert httpx.get(f"{base}/v1/scorecards", headers=alice).status_code == 400
    assert (
        httpx.get(f"{base}/v1/scorecards", params={"model": TINY, "days": 0}, headers=alice).status_code
        == 400
    )
    assert httpx.get(f"{base}/v1/agents/nope/scorecard", headers=alice).status_code == 404


def test_a_failed_agent_request_is_a_failed_run(live: LiveServer) -> None:
    httpx.post(f"{live.base_url}/v1/agents", json=_agent()).raise_for_status()
    r = _chat(live.base_url, "helper", max_tokens=10**12)
    assert r.status_code == 400
    run = httpx.get(f"{live.base_url}/v1/agents/helper/runs").json()["data"][0]
    assert run["status"] == "invalid_request" and "max_tokens" in run["error"]
    card = httpx.get(f"{live.base_url}/v1/agents/helper/scorecard").json()
    assert card["error_rate"] == 1.0
