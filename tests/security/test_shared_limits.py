"""Limits shared through a real Redis: two llmhost instances on one Redis enforce one key's rpm, tpm and
budget exactly, with 50 requests split 25/25 between them at once; the Redis ledger is exact under
concurrency, seeds a key's spend from the usage log once, and lets the reservations of a dead instance
lapse; Redis down is a clear 503, never a 500."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from llmhost.config import Settings
from llmhost.security.keys import KeyStore
from llmhost.security.redis_ledger import RedisLedger
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.providers.fault_server import closed_port
from tests.redis_server import RedisServer
from tests.security.helpers import make_key

pytestmark = pytest.mark.anyio

# $1 per completion token; end-of-text (token 2 of the random-weight model) ruled out, so each answer
# of max_tokens 1 costs exactly $1.
PAID = {"paid": {"targets": [{"provider": "local", "model": TINY, "output_price": 1_000_000}]}}
CHAT: dict[str, Any] = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
PAID_CHAT = {**CHAT, "model": "paid", "logit_bias": {"2": -100}}


async def split(
    servers: list[LiveServer], secret: str, body: dict[str, Any], n: int = 50
) -> list[httpx.Response]:
    """``n`` requests at once, half to each instance."""
    headers = {"authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=n)
    clients = [httpx.AsyncClient(base_url=s.base_url, timeout=120, limits=limits) for s in servers]
    try:
        calls = [clients[i % 2].post("/v1/chat/completions", json=body, headers=headers) for i in range(n)]
        return list(await asyncio.gather(*calls))
    finally:
        for client in clients:
            await client.aclose()


def codes(answers: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in answers]


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path, redis_server: RedisServer
) -> Iterator[tuple[Settings, list[LiveServer]]]:
    """Two instances over one data dir (SQLite) and one Redis database, each key made fresh per test."""
    url = redis_server.new_database()
    settings = make_settings(tmp_path_factory.mktemp("pair") / "data", routes=PAID, limits={"redis_url": url})
    services = [make_service(settings, tiny_model_path) for _ in range(2)]
    servers = [start_server(settings, s) for s in services]
    yield settings, servers
    for server in servers:
        server.stop()
    for service in services:
        service.close()


# ----- two instances, one key ------------------------------------------------------------------------
async def test_fifty_requests_split_over_two_instances_against_a_budget_for_five_admit_five(
    pair: tuple[Settings, list[LiveServer]],
) -> None:
    settings, servers = pair
    secret = make_key(settings, "budget5", budget=5)
    answers = await split(servers, secret, PAID_CHAT)
    assert codes(answers).count(200) == 5 and codes(answers).count(429) == 45, codes(answers)
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota"
    key_id = KeyStore(settings.database_path).get("budget5").id
    for server in servers:
        assert server.service.usage.spent(key_id) <= 5.0  # the usage log both write to
    ledger = RedisLedger(str(settings.limits.redis_url), lambda _: 0.0)
    try:
        assert await ledger.spent(key_id) == 5.0  # the shared counter, settled by both
    finally:
        await ledger.aclose()


async def test_fifty_requests_split_over_two_instances_against_a_5_rpm_key_admit_five(
    pair: tuple[Settings, list[LiveServer]],
) -> None:
    settings, servers = pair
    answers = await split(servers, make_key(settings, "rpm5", rpm=5), CHAT)
    assert codes(answers).count(200) == 5 and codes(answers).count(429) == 45, codes(answers)
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1


async def test_fifty_requests_split_over_two_instances_stay_within_a_tpm_key(
    pair: tuple[Settings, list[LiveServer]],
) -> None:
    settings, servers = pair
    per_request = 2 + 16 + 64 + 1  # what a request reserves: the prompt's bound ("hi") plus max_tokens
    tpm = 5 * per_request
    answers = await split(servers, make_key(settings, "tpm", tpm=tpm), CHAT)
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) >= 5 and len(ok) + codes(answers).count(429) == 50, codes(answers)
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert used <= tpm  # settled reservations free room for more, never past the limit
    assert {r.headers["x-ratelimit-limit-tokens"] for r in ok} == {str(tpm)}


# ----- the Redis ledger ------------------------------------------------------------------------------
async def test_two_ledgers_on_one_redis_are_exact_under_concurrency(redis_url: str) -> None:
    a, b = RedisLedger(redis_url, lambda _: 0.0), RedisLedger(redis_url, lambda _: 0.0)
    try:
        got = await asyncio.gather(*(ledger.reserve("k", 0.5, 0.01) for ledger in (a, b) for _ in range(50)))
        assert sum(r.admitted for r in got) == 50  # $0.50 of $0.01 reservations, from 100 at once
        assert not (await a.reserve("k", 0.5, 0.01)).admitted
        held = [r for r in got if r.admitted]
        await asyncio.gather(*(b.settle("k", r.ticket, 0.002) for r in held[:10]))  # cost less than held
        assert await a.room("k", 0.5) == pytest.approx(0.08)
        assert await b.spent("k") == pytest.approx(0.02)
    finally:
        await a.aclose()
        await b.aclose()


async def test_spent_is_seeded_from_the_usage_log_once_and_redis_is_the_truth_after(redis_url: str) -> None:
    reads: list[str] = []

    def log_of_first(key_id: str) -> float:
        reads.append(key_id)
        return 2.0

    first = RedisLedger(redis_url, log_of_first)
    second = RedisLedger(redis_url, lambda _: 0.0)  # its usage writer has not flushed: it reads $0
    try:
        got = await first.reserve("k", 5.0, 1.0)
        assert got.admitted and got.room == pytest.approx(2.0)
        await first.settle("k", got.ticket, 1.0)
        assert await second.room("k", 5.0) == pytest.approx(2.0)  # not 5: the seeded counter counts
        assert reads == ["k"]
        client: Any = aioredis.from_url(redis_url)
        await client.flushdb()  # Redis lost its data: the next request seeds again
        await client.aclose()
        assert await first.room("k", 5.0) == pytest.approx(3.0)
        assert reads == ["k", "k"]
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_reservations_of_an_instance_that_died_lapse(redis_url: str) -> None:
    dead = RedisLedger(redis_url, lambda _: 0.0, reservation_ttl=0.3)
    alive = RedisLedger(redis_url, lambda _: 0.0)
    try:
        assert (await dead.reserve("k", 1.0, 0.8)).admitted  # ... and its process never settles
        assert not (await alive.reserve("k", 1.0, 0.5)).admitted
        await asyncio.sleep(0.4)
        got = await alive.reserve("k", 1.0, 0.5)
        assert got.admitted and got.room == pytest.approx(0.5)
    finally:
        await dead.aclose()
        await alive.aclose()


# ----- Redis down ------------------------------------------------------------------------------------
def test_with_redis_down_a_limited_key_gets_a_clear_503_and_a_free_key_is_served(
    tmp_path: Path, tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis_url = f"redis://:hunter2-redis-pass@127.0.0.1:{closed_port()}/0"
    settings = make_settings(tmp_path / "d", routes=PAID, limits={"redis_url": redis_url})
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    try:
        with caplog.at_level(logging.WARNING):
            for name, options, body, what in (
                ("budget", {"budget": 5}, PAID_CHAT, "budgets"),
                ("rpm", {"rpm": 5}, CHAT, "rate limits"),
            ):
                secret = make_key(settings, name, **options)
                r = httpx.post(
                    f"{server.base_url}/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {secret}"},
                    timeout=60,
                )
                assert r.status_code == 503, r.text
                message = r.json()["error"]["message"]
                assert f"{what} are kept in Redis at 127.0.0.1:" in message and "did not answer" in message
                assert "hunter2" not in r.text and r.headers["retry-after"] == "1"
            free = make_key(settings, "free")
            r = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                json=CHAT,
                headers={"authorization": f"Bearer {free}"},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        # One line per refused request, as for every 5xx; no traceback, no "unhandled error".
        assert not [rec for rec in caplog.records if rec.exc_info or "unhandled" in rec.getMessage()]
        assert "hunter2" not in caplog.text
    finally:
        server.stop()
        service.close()
