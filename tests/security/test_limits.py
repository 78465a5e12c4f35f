"""Per-key rate limits and budgets: exact under concurrency, 429 with the headers clients read, no leaks.

The Redis tests use a real ``redis-server`` on a loopback port (the ``redis_url`` fixture).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmhost.config import Settings
from llmhost.security import limits
from llmhost.security.keys import KeyStore
from llmhost.security.limits import MemoryWindows, RedisWindows
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.security.helpers import make_key as _key

pytestmark = pytest.mark.anyio

CHAT = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


async def _burst(base: str, secret: str, n: int, body: dict[str, object], path: str = "/v1/chat/completions"):
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        headers = {"authorization": f"Bearer {secret}"}
        return await asyncio.gather(*(client.post(path, json=body, headers=headers) for _ in range(n)))


@pytest.fixture
def live(tmp_path: Path, tiny_model_path: Path) -> Iterator[tuple[LiveServer, Settings]]:
    settings = make_settings(tmp_path / "data")
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    yield server, settings
    server.stop()
    service.close()


# ----- the window itself -----------------------------------------------------------------------------
async def test_a_window_admits_exactly_its_limit_under_concurrency() -> None:
    windows = MemoryWindows(window=0.5)
    got = await asyncio.gather(*(windows.acquire("k", 1, 60) for _ in range(200)))
    assert sum(a.admitted for a in got) == 60
    refused = next(a for a in got if not a.admitted)
    assert refused.remaining == 0 and 0 < refused.reset_s <= 0.5
    await asyncio.sleep(0.55)
    again = await asyncio.gather(*(windows.acquire("k", 1, 60) for _ in range(100)))
    assert sum(a.admitted for a in again) == 60  # the window slid: a full minute's worth again, not more


async def test_no_sliding_window_ever_holds_more_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    windows = MemoryWindows(window=0.25)
    admitted: list[float] = []
    for step in range(160):  # 1.25 s of a client trying every 1/128 s (exact in binary), in bursts of 1-3
        clock[0] = 1000.0 + step / 128
        for _ in range(1 + step % 3):
            if (await windows.acquire("k", 1, 10)).admitted:
                admitted.append(clock[0])
    assert len(admitted) >= 40  # it does admit: 10 per 0.25 s
    for i, t in enumerate(admitted):
        assert sum(1 for u in admitted[i:] if u - t < 0.25) <= 10


async def test_settling_gives_back_what_a_request_did_not_use() -> None:
    windows = MemoryWindows()
    first = await windows.acquire("k", 900, 1000)
    assert first.admitted
    assert not (await windows.acquire("k", 200, 1000)).admitted
    await windows.settle("k", first.ticket, 50)
    assert (await windows.acquire("k", 200, 1000)).admitted
    never = await windows.acquire("k", 5000, 1000)
    assert not never.admitted and never.reset_s == float("inf")


# ----- over HTTP -------------------------------------------------------------------------------------
def test_fifty_clients_against_a_60_rpm_key_get_at_most_60(live: tuple[LiveServer, Settings]) -> None:
    server, settings = live
    secret = _key(settings, "rpm60", rpm=60)
    answers = asyncio.run(_burst(server.base_url, secret, 50, CHAT)) + asyncio.run(
        _burst(server.base_url, secret, 50, CHAT)
    )
    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) == 60 and len(limited) == 40, {r.status_code for r in answers}
    assert ok[0].headers["x-ratelimit-limit-requests"] == "60"
    assert "x-ratelimit-remaining-requests" in ok[0].headers and "x-request-id" in ok[0].headers
    err = limited[0]
    assert int(err.headers["retry-after"]) >= 1
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.json()["error"]["type"] == "rate_limit_error"
    assert err.json()["error"]["code"] == "rate_limit_exceeded"
    other = _key(settings, "free")  # another key is not affected
    assert (
        httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json=CHAT,
            headers={"authorization": f"Bearer {other}"},
            timeout=60,
        ).status_code
        == 200
    )


def test_the_limit_holds_on_every_door(live: tuple[LiveServer, Settings]) -> None:
    server, settings = live
    secret = _key(settings, "rpm2", rpm=2)
    h = {"authorization": f"Bearer {secret}"}
    base = server.base_url
    assert (
        httpx.post(f"{base}/api/chat", json={**CHAT, "stream": False}, headers=h, timeout=60).status_code
        == 200
    )
    msg = {"model": TINY, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    assert (
        httpx.post(f"{base}/v1/messages", json=msg, headers={"x-api-key": secret}, timeout=60).status_code
        == 200
    )
    r = httpx.post(f"{base}/v1/messages", json=msg, headers={"x-api-key": secret}, timeout=60)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    r = httpx.post(f"{base}/api/generate", json={"model": TINY, "prompt": "x", "stream": False}, headers=h)
    assert r.status_code == 429 and "rate limit" in r.json()["error"]


def test_a_tpm_key_refuses_a_request_that_could_never_fit(live: tuple[LiveServer, Settings]) -> None:
    server, settings = live
    secret = _key(settings, "tpm100", tpm=100)
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 500},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 429 and "lower max_tokens" in r.json()["error"]["message"]
    assert "retry-after" not in r.headers
    ok = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-tokens"] == "100"


def test_cancelled_streams_give_their_reservation_back(live: tuple[LiveServer, Settings]) -> None:
    server, settings = live
    secret = _key(settings, "tpm", tpm=2000)
    body = {**CHAT, "max_tokens": 400, "stream": True}
    h = {"authorization": f"Bearer {secret}"}
    for _ in range(6):  # each reserves ~480 tokens: without settling, the 5th could not start
        with httpx.stream(
            "POST", f"{server.base_url}/v1/chat/completions", json=body, headers=h, timeout=60
        ) as r:
            assert r.status_code == 200, r.read()
            next(r.iter_lines())  # first event, then hang up
    service = server.service
    key_id = KeyStore(settings.database_path).get("tpm").id
    deadline = time.monotonic() + 5
    while True:
        held = service.windows.held(f"{key_id}:tpm")
        if held < 2000 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert held < 2000, held  # settled to the tokens really used, not left at the estimates


# ----- budgets ---------------------------------------------------------------------------------------
def test_fifty_requests_against_a_budget_for_five_admit_five(tmp_path: Path, tiny_model_path: Path) -> None:
    # $1 per completion token, max_tokens 1: each request reserves (and may spend) exactly $1.
    routes = {"paid": {"targets": [{"provider": "local", "model": TINY, "output_price": 1_000_000}]}}
    settings = make_settings(tmp_path / "d", routes=routes)
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    try:
        secret = _key(settings, "five", budget=5)
        body = {**CHAT, "model": "paid", "max_tokens": 1}
        answers = asyncio.run(_burst(server.base_url, secret, 50, body))
        codes = [r.status_code for r in answers]
        assert codes.count(200) <= 5 and codes.count(200) + codes.count(429) == 50, codes
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.json()["error"]["code"] == "insufficient_quota"
        service.usage.flush()
        key_id = KeyStore(settings.database_path).get("five").id
        assert service.usage.spent(key_id) <= 5.0
        assert asyncio.run(service.ledger.spent(key_id)) <= 5.0
        # Unpriced routes cost nothing, so the key keeps working on them.
        free = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json=CHAT,
            headers={"authorization": f"Bearer {secret}"},
            timeout=60,
        )
        assert free.status_code == 200
    finally:
        server.stop()
        service.close()


def test_a_budget_survives_a_restart(tmp_path: Path, tiny_model_path: Path) -> None:
    routes = {"paid": {"targets": [{"provider": "local", "model": TINY, "output_price": 1_000_000}]}}
    settings = make_settings(tmp_path / "d", routes=routes)
    secret = _key(settings, "two", budget=2)
    # Each answer is one token ($1): the random-weight model's end token (id 2) is ruled out.
    body = {**CHAT, "model": "paid", "max_tokens": 1, "logit_bias": {"2": -100}}
    for expected in ([200, 200], [429]):  # the second run is a fresh process's view of the same data dir
        service = make_service(settings, tiny_model_path)
        server = start_server(settings, service)
        try:
            h = {"authorization": f"Bearer {secret}"}
            codes = [
                httpx.post(
                    f"{server.base_url}/v1/chat/completions", json=body, headers=h, timeout=60
                ).status_code
                for _ in expected
            ]
            assert codes == expected
        finally:
            server.stop()
            service.close()


# ----- Redis: several instances share one window (more in test_shared_limits.py) -------------------
async def test_redis_windows_are_exact_under_concurrency(redis_url: str) -> None:
    a, b = RedisWindows(redis_url, prefix="t1:"), RedisWindows(redis_url, prefix="t1:")
    try:
        got = await asyncio.gather(*(w.acquire("k", 1, 60) for w in (a, b) for _ in range(100)))
        assert sum(x.admitted for x in got) == 60
        refused = next(x for x in got if not x.admitted)
        assert 0 < refused.reset_s <= 60
        tokens = await a.acquire("t", 900, 1000)
        assert not (await b.acquire("t", 200, 1000)).admitted
        await a.settle("t", tokens.ticket, 10)
        assert (await b.acquire("t", 200, 1000)).admitted
    finally:
        await a.aclose()
        await b.aclose()


def test_counting_tokens_reserves_nothing(tmp_path: Path, tiny_model_path: Path) -> None:
    # Claude Code calls count_tokens constantly: it must neither hold tokens nor money.
    routes = {"paid": {"targets": [{"provider": "local", "model": TINY, "output_price": 1_000_000}]}}
    settings = make_settings(tmp_path / "d", routes=routes)
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    try:
        secret = _key(settings, "counter", budget=5, tpm=5000)
        key_id = KeyStore(settings.database_path).get("counter").id
        body = {"model": "paid", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(20):
            r = httpx.post(
                f"{server.base_url}/v1/messages/count_tokens", json=body, headers={"x-api-key": secret}
            )
            assert r.status_code == 200, r.text
        assert asyncio.run(service.ledger.room(key_id, 5)) == 5
        assert service.windows.held(f"{key_id}:tpm") == 0
        rows = service.audit.rows(limit=100)
        assert len(rows) == 20 and {r.kind for r in rows} == {"count_tokens"}
    finally:
        server.stop()
        service.close()
