"""Ensembles over real loopback HTTP: a front llmhost whose ``ensemble`` routes ask, at once, its own
engine (the tiny model), a second real llmhost, the loopback OpenAI wire server (answers
``"echo: <last user text>"``) and a provider that refuses connections (the injected fault); and the
ad-hoc ``POST /v1/ensemble``, whose members each run the whole pipeline (key rules, usage) on their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from llmhost.config import load_settings
from llmhost.errors import ConfigError
from llmhost.security.keys import KeyStore
from tests.conftest import TINY, LiveServer
from tests.providers.fault_server import closed_port
from tests.providers.wire_servers import openai_app

ServerFactory = Callable[..., LiveServer]
HI: Any = [{"role": "user", "content": "hi"}]
LOCAL = {"provider": "local", "model": TINY}
ECHO = {"provider": "echo", "model": "echo-1"}
BACKUP = {"provider": "backup", "model": TINY}
DOWN = {"provider": "down", "model": "m"}


@pytest.fixture(scope="module")
def echo() -> Iterator[LiveServer]:
    live = LiveServer(openai_app()).start(wait_ready=False)
    yield live
    live.stop()


@pytest.fixture
def front(make_server: ServerFactory, echo: LiveServer) -> LiveServer:
    backup = make_server()
    providers = {
        "echo": {"type": "openai", "base_url": f"{echo.base_url}/v1", "health_interval": 0},
        "backup": {"type": "openai", "base_url": f"{backup.base_url}/v1", "health_interval": 0},
        "down": {"type": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1", "health_interval": 0},
    }
    routes = {
        "panel": {
            "strategy": "ensemble",
            "aggregate": "all",
            "targets": [LOCAL, BACKUP, ECHO, DOWN],
            "retries": 0,
        },
        "vote3": {
            "strategy": "ensemble",
            "targets": [LOCAL, ECHO, {**ECHO, "model": "echo-2"}],
            "retries": 0,
        },
        "judged": {
            "strategy": "ensemble",
            "aggregate": "judge",
            "judge": TINY,
            "targets": [ECHO, {**ECHO, "model": "echo-2"}],
            "retries": 0,
        },
        "fastest": {"strategy": "ensemble", "aggregate": "first", "targets": [DOWN, ECHO], "retries": 0},
        "echo1": {"targets": [ECHO]},
    }
    breaker = {"failures": 1, "window": 60, "cooldown": 30}
    return make_server(providers=providers, routes=routes, breaker=breaker)


def usage_by_target(live: LiveServer) -> dict[str, dict[str, Any]]:
    rows = httpx.get(f"{live.base_url}/api/usage", params={"by": "target"}).json()["rows"]
    return {row["target"]: row for row in rows}


def _chat(client: openai.OpenAI, model: str, **extra: Any) -> Any:
    # The tiny model's end token (id 2) is ruled out, so its answer is never empty.
    body = {"max_tokens": 6, "temperature": 0, "logit_bias": {"2": -100}, **extra}
    return client.chat.completions.with_raw_response.create(model=model, messages=HI, **body)


def test_an_ensemble_route_asks_every_target_and_degrades_to_those_that_answered(
    front: LiveServer, openai_client: Callable[..., openai.OpenAI]
) -> None:
    raw = _chat(openai_client(front), "panel")
    answer = raw.parse()
    body = json.loads(raw.text)
    members = {m["source"]: m for m in body["ensemble"]["members"]}
    assert list(members) == [f"local/{TINY}", f"backup/{TINY}", "echo/echo-1", "down/m"]
    assert [members[s]["status"] for s in members] == ["ok", "ok", "ok", "error"]
    assert "down/m" not in body["ensemble"]["chosen"]
    assert len(answer.choices) == 3  # aggregate "all": one choice per member that answered
    assert answer.choices[2].message.content == "echo: hi"
    assert answer.model == "panel"
    # Each member's usage is its own row; the client is told the sum.
    rows = usage_by_target(front)
    for source in (f"local/{TINY}", f"backup/{TINY}", "echo/echo-1", "down/m"):
        assert rows[source]["requests"] == 1, source
    told = answer.usage
    assert told.prompt_tokens == sum(m["usage"]["prompt_tokens"] for m in members.values() if "usage" in m)
    # The failed member tripped its breaker (failures = 1): the next ensemble skips it without a call.
    body2 = json.loads(_chat(openai_client(front), "panel").text)
    assert "circuit open" in body2["ensemble"]["members"][3]["error"]
    assert usage_by_target(front)["down/m"]["requests"] == 1


def test_vote_over_http_takes_what_the_majority_said(
    front: LiveServer, openai_client: Callable[..., openai.OpenAI]
) -> None:
    body = json.loads(_chat(openai_client(front), "vote3").text)
    assert body["choices"][0]["message"]["content"] == "echo: hi"
    assert body["ensemble"]["reason"].startswith("2 of 3")
    assert body["ensemble"]["wall_ms"] >= max(m["latency_ms"] for m in body["ensemble"]["members"])


def test_a_judge_model_picks_one_of_the_candidates(
    front: LiveServer, openai_client: Callable[..., openai.OpenAI]
) -> None:
    body = json.loads(_chat(openai_client(front), "judged").text)
    assert body["choices"][0]["message"]["content"] == "echo: hi"
    assert body["ensemble"]["reason"].startswith(f"picked by {TINY}")  # the grammar holds the verdict
    assert usage_by_target(front)[f"local/{TINY}"]["requests"] == 1  # the judge's call is billed too


def test_first_answers_with_a_live_member_and_streams(front: LiveServer) -> None:
    body = {"model": "fastest", "messages": HI, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for line in lines[:-1]
    )
    assert text == "echo: hi"


def test_the_official_client_reaches_the_ad_hoc_endpoint_and_the_extension_field(
    front: LiveServer, openai_client: Callable[..., openai.OpenAI]
) -> None:
    client = openai_client(front)
    raw: Any = client.post(
        "/ensemble",
        cast_to=object,
        body={"models": ["echo1", "echo1"], "aggregate": "best_of", "messages": HI, "max_tokens": 4},
    )
    assert raw["choices"][0]["message"]["content"] == "echo: hi"
    resp = client.chat.completions.create(model="vote3", messages=HI, max_tokens=4, logit_bias={"2": -100})
    assert resp.model_extra is not None and resp.model_extra["ensemble"]["aggregate"] == "vote"


def test_the_ad_hoc_endpoint_runs_each_member_through_the_pipeline(front: LiveServer) -> None:
    body = {"models": [TINY, "echo1", "echo1"], "messages": HI, "max_tokens": 4, "logit_bias": {"2": -100}}
    r = httpx.post(f"{front.base_url}/v1/ensemble", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "ensemble"
    assert answer["choices"][0]["message"]["content"] == "echo: hi"
    assert [m["source"] for m in answer["ensemble"]["members"]] == [TINY, "echo1", "echo1"]
    rows = usage_by_target(front)
    assert rows["echo/echo-1"]["requests"] == 2 and rows[f"local/{TINY}"]["requests"] == 1


def test_the_ad_hoc_endpoint_refuses_bad_input_in_openais_envelope(front: LiveServer) -> None:
    url = f"{front.base_url}/v1/ensemble"
    for body, param in (
        ({"models": [], "messages": HI}, "models"),
        ({"models": [TINY], "messages": HI, "aggregate": "median"}, "aggregate"),
        ({"models": [TINY], "messages": HI, "aggregate": "judge"}, "judge"),
    ):
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert param in (r.json()["error"]["param"] or "") + r.json()["error"]["message"]
    r = httpx.post(url, json={"models": ["no-such-model", "nor-this"], "messages": HI}, timeout=30)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


def test_a_key_limited_to_some_models_gets_only_those_members(make_server: ServerFactory) -> None:
    live = make_server()
    keys = KeyStore(live.service.settings.database_path)
    _, secret = keys.create("narrow", models=(TINY,))
    keys.close()
    body = {"models": [TINY, "other-model"], "messages": HI, "max_tokens": 3, "logit_bias": {"2": -100}}
    r = httpx.post(
        f"{live.base_url}/v1/ensemble", json=body, headers={"authorization": f"Bearer {secret}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    members = r.json()["ensemble"]["members"]
    assert members[0]["status"] == "ok"
    assert members[1]["status"] == "error" and "may not use model" in members[1]["error"]


def test_a_judge_ensemble_without_a_judge_is_a_config_error(tmp_path: Any) -> None:
    route = {"strategy": "ensemble", "aggregate": "judge", "targets": [LOCAL]}
    with pytest.raises(ConfigError, match="needs `judge`"):
        load_settings(None, data_dir=tmp_path, routes={"r": route})
