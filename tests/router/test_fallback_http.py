"""Fallback, retries, breakers, health probes, cascade and cost routing over real loopback HTTP.

The front llmhost routes ``smart`` to a fault-injecting OpenAI-style upstream first and to a second,
real llmhost (serving the tiny model) as the backup. The cascade and cost routes put the loopback
OpenAI wire server (``tests/providers/wire_servers.openai_app``: it answers ``"echo: <last user text>"``)
beside the fault server, so each answer says which upstream gave it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TINY, LiveServer
from tests.providers.fault_server import Fault, FaultServer, Recorded, closed_port
from tests.providers.wire_servers import openai_app, recorded
from tests.support import wait_until

ServerFactory = Callable[..., LiveServer]
ClientFactory = Callable[..., openai.OpenAI]
HI: Any = [{"role": "user", "content": "hi"}]
BACKUP = f"backup/{TINY}"


@pytest.fixture
def backup(make_server: ServerFactory) -> LiveServer:
    return make_server()


@pytest.fixture
def fault() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def echo() -> Iterator[LiveServer]:
    """The loopback OpenAI wire server; tests count its requests from where they start."""
    live = LiveServer(openai_app()).start(wait_ready=False)
    yield live
    live.stop()


def front(
    make_server: ServerFactory,
    first_url: str,
    backup: LiveServer,
    *,
    retries: int = 0,
    failures: int = 2,
    cooldown: float = 0.5,
    health_interval: float = 0,
) -> LiveServer:
    """The front llmhost: route ``smart`` tries ``flaky/m`` at ``first_url``, then the backup."""
    providers: dict[str, Any] = {
        "flaky": {
            "type": "openai",
            "base_url": f"{first_url}/v1",
            "timeout_first_token": 1.0,
            "health_interval": health_interval,
        },
        "backup": {"type": "openai", "base_url": f"{backup.base_url}/v1", "health_interval": 0},
    }
    routes = {
        "smart": {
            "targets": [{"provider": "flaky", "model": "m"}, {"provider": "backup", "model": TINY}],
            "retries": retries,
            "backoff": 0,
        }
    }
    breaker = {"failures": failures, "window": 60, "cooldown": cooldown}
    return make_server(providers=providers, routes=routes, breaker=breaker)


@pytest.fixture
def setup(
    make_server: ServerFactory, fault: FaultServer, backup: LiveServer
) -> tuple[LiveServer, FaultServer]:
    return front(make_server, fault.base_url, backup), fault


def chat(live: LiveServer, stream: bool = False, model: str = "smart") -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 4, "stream": stream}
    return httpx.post(f"{live.base_url}/v1/chat/completions", json=body, timeout=30)


def targets_of(live: LiveServer, route: str = "smart") -> list[dict[str, Any]]:
    """The route's targets as ``GET /api/providers`` describes them (breaker state included)."""
    routes = httpx.get(f"{live.base_url}/api/providers").json()["routes"]
    found: list[dict[str, Any]] = next(r["targets"] for r in routes if r["name"] == route)
    return found


def breaker_of(live: LiveServer, index: int = 0, route: str = "smart") -> str:
    state: str = targets_of(live, route)[index]["breaker"]
    return state


def chats(requests: list[Recorded]) -> list[Recorded]:
    """The chat completions among what the fault server received (health probes are GETs)."""
    return [r for r in requests if r.method == "POST" and r.path == "/v1/chat/completions"]


def usage_by_target(live: LiveServer) -> dict[str, dict[str, Any]]:
    """``GET /api/usage?by=target``: requests, tokens and cost per target, failed attempts included."""
    rows = httpx.get(f"{live.base_url}/api/usage", params={"by": "target"}).json()["rows"]
    return {row["target"]: row for row in rows}


def test_refused_connection_falls_back_to_the_backup_within_five_seconds(
    make_server: ServerFactory, backup: LiveServer, openai_client: ClientFactory
) -> None:
    live = front(make_server, f"http://127.0.0.1:{closed_port()}", backup)
    started = time.perf_counter()
    r = chat(live)
    assert r.status_code == 200, r.text
    assert time.perf_counter() - started < 5  # a refused connect is instant: no timeout was waited out
    assert r.headers["x-llmhost-target"] == BACKUP
    resp = openai_client(live).chat.completions.create(model="smart", messages=HI, max_tokens=3)
    assert resp.usage is not None and resp.usage.completion_tokens >= 1


def test_server_errors_fall_back_and_open_the_breaker_then_it_closes(
    setup: tuple[LiveServer, FaultServer],
) -> None:
    live, fault = setup
    fault.reset(Fault(status=500, error={"error": {"message": "boom", "type": "server_error"}}))
    for _ in range(2):
        r = chat(live)
        assert r.status_code == 200 and r.headers["x-llmhost-target"] == BACKUP
    assert breaker_of(live) == "open"
    fault.reset()
    chat(live)
    assert fault.requests == []  # open: the flaky upstream is not even tried
    wait_until(lambda: breaker_of(live) == "half_open", what="half-open after the 0.5 s cooldown")
    r = chat(live)  # the one half-open probe goes through and succeeds
    assert r.headers["x-llmhost-target"] == "flaky/m"
    assert breaker_of(live) == "closed"


def test_rate_limited_upstream_falls_back(setup: tuple[LiveServer, FaultServer]) -> None:
    live, fault = setup
    fault.reset(Fault(status=429, error={"error": {"message": "slow down"}}, headers={"Retry-After": "3"}))
    r = chat(live)
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == BACKUP


def test_stream_stalled_before_its_first_token_falls_back_transparently(
    setup: tuple[LiveServer, FaultServer],
) -> None:
    live, fault = setup
    fault.reset(Fault(stall_before_first_chunk=10))
    started = time.perf_counter()
    r = chat(live, stream=True)
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == BACKUP
    assert time.perf_counter() - started < 5  # the 1 s first-token timeout cut the 10 s stall
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


def test_client_errors_from_upstream_are_not_retried(
    make_server: ServerFactory, fault: FaultServer, backup: LiveServer
) -> None:
    """On a route with two retries (which a 500 shows it makes), a 400 is sent upstream exactly once,
    does not fall back, and reaches the client with the upstream's message."""
    live = front(make_server, fault.base_url, backup, retries=2, failures=10)
    fault.reset(Fault(status=500, error={"error": {"message": "boom", "type": "server_error"}}))
    r = chat(live)
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == BACKUP
    assert len(chats(fault.requests)) == 3  # the first try and two retries, then the backup

    fault.reset(Fault(status=400, error={"error": {"message": "bad field", "type": "invalid_request_error"}}))
    r = chat(live)
    assert r.status_code == 400 and "bad field" in r.json()["error"]["message"]
    assert len(chats(fault.requests)) == 1
    assert breaker_of(live) == "closed"


# -- health probes ------------------------------------------------------------------------------------


def test_a_failed_health_probe_opens_the_breaker_before_any_request(
    make_server: ServerFactory, fault: FaultServer, backup: LiveServer
) -> None:
    """With ``health_interval`` set, the gateway probes ``GET /v1/models`` by itself; while the upstream
    answers, its breaker stays closed, and once the upstream goes down the next probe opens it, with no
    request made: the next request goes straight to the backup."""
    live = front(make_server, fault.base_url, backup, health_interval=0.05, cooldown=60)

    def probes() -> int:
        return sum(1 for r in fault.requests if (r.method, r.path) == ("GET", "/v1/models"))

    wait_until(lambda: probes() >= 2, what="two health probes")
    assert breaker_of(live) == "closed"
    assert chats(fault.requests) == []

    fault.stop()  # the upstream goes down: connections are refused from here on
    wait_until(lambda: breaker_of(live) == "open", what="the breaker opened by a failed probe")
    assert targets_of(live)[0]["retry_in"] > 30  # opened for the whole cooldown, not half-open
    assert breaker_of(live, 1) == "closed"  # the backup is not probed (health_interval 0)
    r = chat(live)
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == BACKUP
    assert set(usage_by_target(live)) == {BACKUP}  # no attempt on flaky/m: the open breaker skipped it


# -- cascade and cost routing over HTTP ---------------------------------------------------------------

JSON_ANSWER = '{"ok": true}'


def answering(content: str, prompt_tokens: int = 3, completion_tokens: int = 5) -> Fault:
    """The fault server answering a chat completion of ``content`` with the given usage."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return Fault(
        answer={
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [choice],
            "usage": usage,
        }
    )


@pytest.fixture
def gateway(make_server: ServerFactory, fault: FaultServer, echo: LiveServer) -> LiveServer:
    """A front whose routes mix the echo upstream (never JSON) and the fault server (JSON when told):

    ``escalate``: cascade on JSON, echo first; ``keep``: the same, the fault server first;
    ``cheapest``: strategy cost, the pricier echo listed first."""
    providers = {
        "echo": {"type": "openai", "base_url": f"{echo.base_url}/v1", "health_interval": 0},
        "fault": {"type": "openai", "base_url": f"{fault.base_url}/v1", "health_interval": 0},
    }
    echo_target = {"provider": "echo", "model": "echo-1"}
    fault_target = {"provider": "fault", "model": "m"}
    routes = {
        "escalate": {"targets": [echo_target, fault_target], "cascade": ["json"], "retries": 0},
        "keep": {"targets": [fault_target, echo_target], "cascade": ["json"], "retries": 0},
        "cheapest": {
            "strategy": "cost",
            "targets": [
                {**echo_target, "input_price": 5.0, "output_price": 5.0},
                {**fault_target, "input_price": 1.0, "output_price": 2.0},
            ],
            "retries": 0,
        },
    }
    return make_server(providers=providers, routes=routes)


def echo_chats(echo: LiveServer, since: int) -> list[dict[str, Any]]:
    return [r for r in recorded(echo)[since:] if r["path"] == "/v1/chat/completions"]


def test_a_cascade_escalates_over_http_when_the_first_answer_is_not_json(
    gateway: LiveServer, fault: FaultServer, echo: LiveServer, openai_client: ClientFactory
) -> None:
    """A JSON request to ``escalate``: the echo upstream's text is not JSON, so the route asks the next
    tier, whose JSON answer the client gets; both upstreams were asked once, and both calls are billed."""
    since = len(recorded(echo))
    fault.reset(answering(JSON_ANSWER))
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="escalate", messages=HI, response_format={"type": "json_object"}
    )
    assert raw.headers["x-llmhost-target"] == "fault/m"
    answer = raw.parse()
    assert answer.choices[0].message.content == JSON_ANSWER and answer.model == "escalate"
    [asked] = echo_chats(echo, since)
    assert asked["body"]["response_format"] == {"type": "json_object"}  # the first tier was asked for JSON
    assert len(chats(fault.requests)) == 1
    usage = usage_by_target(gateway)
    assert {t: row["requests"] for t, row in usage.items()} == {"echo/echo-1": 1, "fault/m": 1}


def test_a_cascade_keeps_a_first_answer_that_is_json(
    gateway: LiveServer, fault: FaultServer, echo: LiveServer, openai_client: ClientFactory
) -> None:
    since = len(recorded(echo))
    fault.reset(answering(JSON_ANSWER))
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="keep", messages=HI, response_format={"type": "json_object"}
    )
    assert raw.headers["x-llmhost-target"] == "fault/m"
    assert raw.parse().choices[0].message.content == JSON_ANSWER
    assert echo_chats(echo, since) == []  # the second tier was never asked


def test_the_cost_strategy_sends_to_the_cheapest_target_and_bills_its_prices(
    gateway: LiveServer, fault: FaultServer, echo: LiveServer, openai_client: ClientFactory
) -> None:
    """``cheapest`` lists the pricier echo first: the cost strategy still asks the cheaper fault server
    first, bills its prices, and falls back to the pricier one only when the cheap one fails."""
    since = len(recorded(echo))
    fault.reset(answering("cheap", prompt_tokens=3, completion_tokens=5))
    client = openai_client(gateway)
    raw = client.chat.completions.with_raw_response.create(model="cheapest", messages=HI)
    assert raw.headers["x-llmhost-target"] == "fault/m"
    assert raw.parse().choices[0].message.content == "cheap"
    assert echo_chats(echo, since) == [] and len(chats(fault.requests)) == 1
    cheap = usage_by_target(gateway)["fault/m"]
    assert (cheap["prompt_tokens"], cheap["completion_tokens"]) == (3, 5)
    assert cheap["cost"] == pytest.approx((3 * 1.0 + 5 * 2.0) / 1e6)  # per million: input 1, output 2

    fault.reset(Fault(status=503, error={"error": {"message": "down", "type": "server_error"}}))
    raw = client.chat.completions.with_raw_response.create(model="cheapest", messages=HI)
    assert raw.headers["x-llmhost-target"] == "echo/echo-1"
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert len(echo_chats(echo, since)) == 1
