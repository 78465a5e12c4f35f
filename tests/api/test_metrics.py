"""``GET /metrics``: Prometheus text exposition of HTTP, engine, gateway and trust state, over real
loopback HTTP."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmhost.core.stage import Answer, Request, StageBase
from llmhost.core.types import RequestContext
from llmhost.security.keys import KeyStore
from llmhost.service import Service
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.providers.fault_server import Fault, FaultServer

SECRET = "sk-metrics-test-5f3a9c1e7b"
HEADER_SECRET = "hdr-secret-0d41b2"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(live: LiveServer, key: str | None = None) -> tuple[str, Samples]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{live.base_url}/metrics", timeout=10, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_until(live: LiveServer, name: str, at_least: float = 1, **labels: str) -> Samples:
    """Usage rows reach the log in batches (~50 ms), so usage metrics may lag a request slightly."""
    deadline = time.monotonic() + 5
    while True:
        _, samples = scrape(live)
        if (value(samples, name, **labels) or 0) >= at_least or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def chat(live: LiveServer, model: str, **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{live.base_url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_http_requests_are_counted_by_route_template_not_raw_path(server: LiveServer) -> None:
    assert httpx.get(f"{server.base_url}/v1/models/{TINY}").status_code == 200
    assert httpx.get(f"{server.base_url}/v1/models/no-such-model").status_code == 404
    assert httpx.get(f"{server.base_url}/no/such/path/123").status_code == 404
    _, samples = scrape(server)
    template = "/v1/models/{model}"
    total = "llmhost_http_requests_total"
    assert value(samples, total, path=template, method="GET", status="200") == 1
    assert value(samples, total, path=template, method="GET", status="404") == 1
    assert value(samples, total, path="<unmatched>", method="GET", status="404") == 1
    assert value(samples, "llmhost_http_request_duration_seconds_count", path=template) == 2
    assert value(samples, "llmhost_http_request_duration_seconds_bucket", path=template, le="+Inf") == 2
    assert not any(f"/v1/models/{TINY}" in dict(labels).get("path", "") for _, labels in samples)


def test_loaded_models_slots_and_memory_are_read_at_scrape_time(server: LiveServer) -> None:
    _, samples = scrape(server)
    assert value(samples, "llmhost_ready") == 1
    assert value(samples, "llmhost_models_loaded") == 1
    (labels,) = [dict(lb) for name, lb in samples if name == "llmhost_model_slots"]
    assert labels["model"] == TINY and labels["digest"].startswith("sha256:")
    assert value(samples, "llmhost_model_slots", **labels) == 4  # n_parallel in the test settings
    assert value(samples, "llmhost_model_slots_busy", **labels) == 0
    assert value(samples, "llmhost_model_requests_waiting", **labels) == 0
    memory = value(samples, "llmhost_model_memory_bytes", **labels, device="cpu")
    assert memory is not None and memory > 0
    budget = value(samples, "llmhost_memory_budget_bytes", device="cpu")
    assert budget is not None and budget >= memory


def test_answers_count_requests_tokens_and_latency_per_target(server: LiveServer) -> None:
    r = chat(server, TINY)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    target = {"route": TINY, "provider": "local", "target": f"local/{TINY}"}
    samples = scrape_until(server, "llmhost_gateway_requests_total", **target, status="ok")
    assert value(samples, "llmhost_gateway_requests_total", **target, status="ok") == 1
    assert value(samples, "llmhost_gateway_prompt_tokens_total", **target) == usage["prompt_tokens"]
    assert value(samples, "llmhost_gateway_completion_tokens_total", **target) == usage["completion_tokens"]
    assert value(samples, "llmhost_gateway_request_duration_seconds_count", **target) == 1
    total = "llmhost_http_requests_total"
    assert value(samples, total, path="/v1/chat/completions", method="POST", status="200") == 1


def test_counters_keep_counting_across_scrapes_and_streams_count_too(server: LiveServer) -> None:
    target = {"route": TINY, "provider": "local", "target": f"local/{TINY}"}
    for expected, stream in ((1, False), (2, True)):
        body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = httpx.post(f"{server.base_url}/v1/chat/completions", json={**body, "stream": stream}, timeout=30)
        assert r.status_code == 200
        samples = scrape_until(server, "llmhost_gateway_requests_total", expected, **target, status="ok")
        assert value(samples, "llmhost_gateway_requests_total", **target, status="ok") == expected
        total = "llmhost_http_requests_total"
        assert value(samples, total, path="/v1/chat/completions", method="POST", status="200") == expected


def test_metrics_need_the_key_once_one_is_set_and_count_the_refusals(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", api_key="server-key-7c2e")
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:
        assert httpx.get(f"{live.base_url}/v1/models").status_code == 401
        # curl -d sends a form content type; the gate routes a corrected copy of the request.
        r = httpx.post(
            f"{live.base_url}/v1/chat/completions",
            content=b"{}",
            headers={"content-type": "application/x-www-form-urlencoded", "authorization": "Bearer x"},
        )
        assert r.status_code == 401
        ok = httpx.post(
            f"{live.base_url}/v1/chat/completions",
            content=b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":2}',
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "authorization": "Bearer server-key-7c2e",
            },
            timeout=30,
        )
        assert ok.status_code == 200, ok.text
        assert httpx.get(f"{live.base_url}/metrics").status_code == 401
        text, samples = scrape(live, "server-key-7c2e")
        total = "llmhost_http_requests_total"
        assert value(samples, total, path="/v1/models", method="GET", status="401") == 1
        assert value(samples, total, path="/v1/chat/completions", method="POST", status="401") == 1
        assert value(samples, total, path="/v1/chat/completions", method="POST", status="200") == 1
        assert value(samples, total, path="/metrics", method="GET", status="401") == 1
        assert "server-key-7c2e" not in text
    finally:
        live.stop()
        service.close()


# ----- gateway: a failing upstream opens its breaker ------------------------------------------------


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


@pytest.fixture
def front(
    tmp_path: Path, tiny_model_path: Path, fault: FaultServer, backup: LiveServer
) -> Iterator[tuple[LiveServer, Service]]:
    """``smart`` routes to a fault-injecting upstream (with a key and a secret header), then a backup."""
    providers: dict[str, Any] = {
        "flaky": {
            "type": "openai",
            "base_url": f"{fault.base_url}/v1",
            "api_key": SECRET,
            "headers": {"X-Extra-Auth": HEADER_SECRET},
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
        breaker={"failures": 2, "window": 60, "cooldown": 30},
    )
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    yield live, service
    live.stop()
    service.close()


def test_open_breaker_and_failed_attempts_show_in_metrics(
    front: tuple[LiveServer, Service], fault: FaultServer, backup: LiveServer
) -> None:
    live, _ = front
    _, samples = scrape(live)
    state = "llmhost_breaker_state"
    assert value(samples, state, route="smart", target="flaky/m") == 0
    fault.reset(Fault(status=500, error={"error": {"message": "boom", "type": "server_error"}}))
    for _ in range(2):
        r = chat(live, "smart")
        assert r.status_code == 200 and r.headers["x-llmhost-target"] == f"backup/{TINY}"
    assert fault.requests[0].headers.get("authorization") == f"Bearer {SECRET}"  # the key was in use
    backup_target = {"route": "smart", "provider": "backup", "target": f"backup/{TINY}"}
    samples = scrape_until(live, "llmhost_gateway_requests_total", 2, **backup_target, status="ok")
    assert value(samples, state, route="smart", target="flaky/m") == 2  # open
    assert value(samples, state, route="smart", target=f"backup/{TINY}") == 0
    assert value(samples, "llmhost_breaker_opened_total", target="flaky/m") == 1
    assert value(samples, "llmhost_gateway_requests_total", **backup_target, status="ok") == 2
    failed = {
        dict(lb)["status"]: v
        for (name, lb), v in samples.items()
        if name == "llmhost_gateway_requests_total" and dict(lb)["target"] == "flaky/m"
    }
    assert "ok" not in failed and sum(failed.values()) == 2
    assert value(samples, "llmhost_target_latency_p50_seconds", route="smart", target=f"backup/{TINY}")
    # Each app has its own registry: the backup server knows nothing of the front's route.
    backup_text, _ = scrape(backup)
    assert 'route="smart"' not in backup_text


def test_provider_credentials_never_appear_in_metrics(
    front: tuple[LiveServer, Service], fault: FaultServer
) -> None:
    live, _ = front
    fault.reset(Fault(status=500, error={"error": {"message": f"bad key {SECRET}", "type": "server_error"}}))
    chat(live, "smart")
    fault.reset()
    chat(live, "smart")
    scrape_until(
        live,
        "llmhost_gateway_requests_total",
        route="smart",
        provider="backup",
        target=f"backup/{TINY}",
        status="ok",
    )
    text, _ = scrape(live)
    for secret in (SECRET, HEADER_SECRET, "Bearer"):
        assert secret not in text
    assert 'provider="flaky"' in text  # the provider is named, its key is not


# ----- the engine: TTFT, generation speed, tokens, prefix cache, KV cells ------------------------------


def test_engine_counts_ttft_speed_tokens_and_prefix_cache_hits_per_loaded_model(
    server: LiveServer, service: Service
) -> None:
    # The same long prompt twice: the second reuses the first's KV cells (a prefix-cache hit).
    prompt = "tell me a story about a lighthouse keeper and a storm " * 4
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 5,
        "ignore_eos": True,
    }
    usages = []
    for _ in range(2):
        r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        usages.append(r.json()["usage"])
    _, samples = scrape(server)
    (labels,) = [dict(lb) for name, lb in samples if name == "llmhost_model_slots"]
    assert value(samples, "llmhost_model_time_to_first_token_seconds_count", **labels) == 2
    ttft_sum = value(samples, "llmhost_model_time_to_first_token_seconds_sum", **labels)
    assert ttft_sum is not None and 0 < ttft_sum < 30
    assert value(samples, "llmhost_model_time_per_output_token_seconds_count", **labels) == 2
    tpot_sum = value(samples, "llmhost_model_time_per_output_token_seconds_sum", **labels)
    assert tpot_sum is not None and tpot_sum > 0
    assert value(samples, "llmhost_model_generation_tokens_total", **labels) == 10
    prompt_tokens = sum(u["prompt_tokens"] for u in usages)
    assert value(samples, "llmhost_model_prompt_tokens_total", **labels) == prompt_tokens
    hits = value(samples, "llmhost_model_prefix_cache_hit_tokens_total", **labels)
    assert hits is not None and usages[1]["prompt_tokens"] // 2 < hits < usages[1]["prompt_tokens"]
    # KV cells: the capacity is every slot's window; idle, nothing is active and the prompts stay cached.
    (model,) = service.models.loaded()
    capacity = model.runner.n_slots * model.runner.n_ctx_slot
    assert value(samples, "llmhost_model_kv_cells", **labels) == capacity
    assert value(samples, "llmhost_model_kv_cells_used", **labels, state="active") == 0
    cached = value(samples, "llmhost_model_kv_cells_used", **labels, state="cached")
    assert cached is not None and usages[0]["prompt_tokens"] <= cached <= capacity


def test_kv_cells_of_running_requests_show_as_active(service: Service, server: LiveServer) -> None:
    (model,) = service.models.loaded()
    metrics = server.server.config.app.state.metrics  # rendered here: an HTTP scrape may miss the moment
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}
    seen: list[float] = []
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json={**body, "stream": True, "ignore_eos": True}
    ) as r:
        lines = r.iter_lines()
        next(lines)  # the first token is out: the prompt's cells are filled
        while model.engine.busy_slots and not any(seen):
            samples = {
                s.labels["state"]: s.value
                for family in text_string_to_metric_families(metrics.render().decode())
                for s in family.samples
                if s.name == "llmhost_model_kv_cells_used"
            }
            seen.append(samples["active"])
    assert any(seen), "the request ran to its end before one render saw it"
    assert max(seen) <= 400 + 64


# ----- limits, budgets and policy decisions --------------------------------------------------------


def test_limit_and_budget_rejections_are_counted_by_kind(tmp_path: Path, tiny_model_path: Path) -> None:
    routes = {"paid": {"targets": [{"provider": "local", "model": TINY, "output_price": 1_000_000}]}}
    settings = make_settings(tmp_path / "data", routes=routes)
    store = KeyStore(settings.database_path)
    limited = store.create("limited", rpm=1, scopes=["inference", "metrics"])[1]
    tight = store.create("tight", tpm=10)[1]
    broke = store.create("broke", budget=0)[1]
    store.close()
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:
        _, samples = scrape(live, limited)  # a scrape is no inference request: the rpm window is untouched
        kinds = ("requests", "tokens", "budget")
        assert [value(samples, "llmhost_rate_limit_rejections_total", kind=k) for k in kinds] == [0, 0, 0]
        assert chat(live, TINY, authorization=f"Bearer {limited}").status_code == 200
        assert chat(live, TINY, authorization=f"Bearer {limited}").status_code == 429
        assert chat(live, TINY, authorization=f"Bearer {tight}").status_code == 429
        refused = chat(live, "paid", authorization=f"Bearer {broke}")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        text, samples = scrape(live, limited)
        assert [value(samples, "llmhost_rate_limit_rejections_total", kind=k) for k in kinds] == [1, 1, 1]
        for secret in (limited, tight, broke):
            assert secret not in text
    finally:
        live.stop()
        service.close()


class _CountingPolicy(StageBase):
    """Stands in for the governance stage: what the metrics read is its ``counts``."""

    name = "policy"

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        self.counts[("input", "no-card-numbers", "allow")] += 1
        return request

    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        self.counts[("output", "redact-emails", "redact")] += 1
        return answer


def test_policy_decisions_are_counted_by_direction_rule_and_action(
    tmp_path: Path, tiny_model_path: Path, server: LiveServer
) -> None:
    _, samples = scrape(server)  # a pipeline without a policy stage: no series, no error
    assert not [name for name, _ in samples if name.startswith("llmhost_policy_decisions")]
    settings = make_settings(tmp_path / "policy")
    service = Service(settings, extra_stages=[_CountingPolicy()])
    service.store.import_file(tiny_model_path, TINY)
    live = start_server(settings, service)
    try:
        for _ in range(2):
            assert chat(live, TINY).status_code == 200
        _, samples = scrape(live)
        decisions = "llmhost_policy_decisions_total"
        assert value(samples, decisions, direction="input", rule="no-card-numbers", action="allow") == 2
        assert value(samples, decisions, direction="output", rule="redact-emails", action="redact") == 2
    finally:
        live.stop()
        service.close()


def test_the_governance_policy_stage_decisions_show_in_metrics(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", policy={"redact": ["email"]})
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:
        body = {
            "model": TINY,
            "messages": [{"role": "user", "content": "mail ann@example.com"}],
            "max_tokens": 2,
        }
        assert httpx.post(f"{live.base_url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        text, samples = scrape(live)
        redacted = [
            (dict(labels), v)
            for (name, labels), v in samples.items()
            if name == "llmhost_policy_decisions_total" and dict(labels)["action"] == "redact"
        ]
        assert redacted == [({"direction": "input", "rule": "email", "action": "redact"}, 1)], redacted
        assert "ann@example.com" not in text
    finally:
        live.stop()
        service.close()
