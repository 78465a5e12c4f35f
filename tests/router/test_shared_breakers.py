"""Circuit breakers shared through a real Redis: an opening on one instance opens every instance, failures
add up across instances, one probe goes out after the cooldown, and Redis down leaves breakers local.

The first half drives :class:`SharedBreakers` directly (two or three "instances" in one event loop);
the second runs real llmhost servers whose route ``smart`` tries a refused port first, then a backup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from llmhost.router.breaker import BreakerState, CircuitBreaker
from llmhost.router.shared_breakers import SharedBreakers
from tests.conftest import TINY, LiveServer, ServerFactory
from tests.providers.fault_server import closed_port
from tests.providers.wire_servers import openai_app, recorded
from tests.support import wait_until

TARGET = "flaky/echo-1"


async def eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` on the event loop (the breakers' tasks run meanwhile) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still false after {timeout:g} s")
        await asyncio.sleep(0.01)


async def listeners(url: str, channel: str) -> int:
    client: Any = aioredis.from_url(url)
    try:
        found = await client.pubsub_numsub(channel)
        return int(found[0][1])
    finally:
        await client.aclose()


Instances = Callable[..., Awaitable[list[tuple[SharedBreakers, CircuitBreaker]]]]


@pytest.fixture
async def instances(redis_url: str) -> AsyncIterator[Instances]:
    """``await instances(n, failures=2, cooldown=0.3)``: n started SharedBreakers on one Redis database,
    each sharing its own breaker of TARGET, subscribed before this returns."""
    made: list[SharedBreakers] = []

    async def make(
        n: int = 2, *, failures: int = 2, window: float = 60, cooldown: float = 0.3
    ) -> list[tuple[SharedBreakers, CircuitBreaker]]:
        pairs = []
        for _ in range(n):
            shared, breaker = SharedBreakers(redis_url), CircuitBreaker(failures, window, cooldown)
            shared.attach(TARGET, breaker)
            shared.start()
            made.append(shared)
            pairs.append((shared, breaker))
        channel = pairs[0][0].channel
        total = sum(1 for s in made if s.channel == channel)
        deadline = time.monotonic() + 5
        while await listeners(redis_url, channel) < total:
            assert time.monotonic() < deadline, "the instances did not subscribe"
            await asyncio.sleep(0.01)
        return pairs

    yield make
    for shared in made:
        await shared.aclose()


@pytest.mark.anyio
async def test_an_opening_on_one_instance_opens_the_target_on_every_instance(instances: Instances) -> None:
    (_, a), (_, b) = await instances(2, failures=2)
    a.record_failure()
    a.record_failure()
    assert a.state is BreakerState.OPEN
    await eventually(lambda: b.state is BreakerState.OPEN, what="B open")
    assert not b.allow()
    assert 0 < (b.seconds_until_probe() or 0) <= 0.3


@pytest.mark.anyio
async def test_failures_on_two_instances_add_up_to_the_threshold(instances: Instances) -> None:
    (_, a), (_, b) = await instances(2, failures=2)
    a.record_failure()
    await asyncio.sleep(0.05)  # A's failure is in Redis before B's
    b.record_failure()  # one each: neither alone reaches two
    await eventually(lambda: a.state is BreakerState.OPEN and b.state is BreakerState.OPEN, what="both open")


@pytest.mark.anyio
async def test_a_success_after_failures_clears_the_shared_window(instances: Instances) -> None:
    (_, a), (_, b) = await instances(2, failures=2)
    a.record_failure()
    await asyncio.sleep(0.05)
    a.record_success()
    await asyncio.sleep(0.05)
    b.record_failure()
    await asyncio.sleep(0.2)
    assert a.state is BreakerState.CLOSED and b.state is BreakerState.CLOSED


@pytest.mark.anyio
async def test_after_the_cooldown_one_probe_goes_out_across_instances_and_its_success_closes_all(
    instances: Instances,
) -> None:
    pairs = await instances(3, failures=1, cooldown=0.3)
    (_, first), *_ = pairs
    first.record_failure()
    await eventually(lambda: all(b.state is BreakerState.OPEN for _, b in pairs), what="all open")
    await eventually(lambda: all(b.state is BreakerState.HALF_OPEN for _, b in pairs), what="all half-open")
    claims = await asyncio.gather(*(s.claim_probe(TARGET, b.cooldown) for s, b in pairs))
    assert sorted(claims) == [False, False, True]  # exactly one instance probes
    winner = pairs[claims.index(True)][1]
    winner.record_success()
    await eventually(lambda: all(b.state is BreakerState.CLOSED for _, b in pairs), what="all closed")


@pytest.mark.anyio
async def test_a_failed_probe_opens_every_instance_again(instances: Instances) -> None:
    (sa, a), (_, b) = await instances(2, failures=1, cooldown=0.3)
    a.record_failure()
    await eventually(lambda: b.state is BreakerState.HALF_OPEN, what="B half-open after the cooldown")
    assert a.allow() and await sa.claim_probe(TARGET, a.cooldown)
    a.record_failure()  # the probe failed
    await eventually(lambda: b.state is BreakerState.OPEN, what="B open again")
    assert b.opened_count == 2


@pytest.mark.anyio
async def test_an_instance_started_later_reads_which_targets_are_open(instances: Instances) -> None:
    ((_, a),) = await instances(1, failures=1, cooldown=5)
    a.record_failure()
    await asyncio.sleep(0.1)  # A's opening is in Redis
    ((_, late),) = await instances(1, failures=1, cooldown=5)
    await eventually(lambda: late.state is BreakerState.OPEN, what="the late instance open")
    assert 4 < (late.seconds_until_probe() or 0) <= 5


@pytest.mark.anyio
async def test_without_redis_breakers_work_locally_and_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    shared = SharedBreakers(f"redis://127.0.0.1:{closed_port()}/0")
    breaker = CircuitBreaker(failures=2, window=60, cooldown=0.2)
    shared.attach(TARGET, breaker)
    shared.start()
    try:
        with caplog.at_level(logging.WARNING, logger="llmhost.router.shared_breakers"):
            for _ in range(3):
                breaker.record_failure()
                await asyncio.sleep(0.05)
            assert breaker.state is BreakerState.OPEN and not breaker.allow()
            await eventually(lambda: breaker.state is BreakerState.HALF_OPEN, what="half-open")
            assert breaker.allow() and await shared.claim_probe(TARGET, breaker.cooldown)
            breaker.record_success()
            assert breaker.state is BreakerState.CLOSED
            await asyncio.sleep(0.1)
        assert not shared.reachable
        warnings = [r for r in caplog.records if "did not answer" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    finally:
        await shared.aclose()


# ----- real servers ----------------------------------------------------------------------------------
HI: Any = [{"role": "user", "content": "hi"}]
BACKUP = f"backup/{TINY}"


@pytest.fixture
def backup(make_server: ServerFactory) -> LiveServer:
    return make_server()


@pytest.fixture
def upstream() -> Iterator[LiveServer]:
    """An OpenAI-style upstream on a port that refuses connections until the test starts it."""
    live = LiveServer(openai_app())
    yield live
    if live.thread.is_alive():
        live.stop()


def front(make_server: ServerFactory, upstream_url: str, backup: LiveServer, redis_url: str) -> LiveServer:
    """An llmhost whose route ``smart`` tries ``flaky/echo-1`` first, then the backup; breakers shared."""
    providers: dict[str, Any] = {
        "flaky": {"type": "openai", "base_url": f"{upstream_url}/v1", "health_interval": 0},
        "backup": {"type": "openai", "base_url": f"{backup.base_url}/v1", "health_interval": 0},
    }
    routes = {
        "smart": {
            "targets": [{"provider": "flaky", "model": "echo-1"}, {"provider": "backup", "model": TINY}],
            "backoff": 0,
        }
    }
    breaker = {"failures": 2, "window": 60, "cooldown": 1.0}
    return make_server(providers=providers, routes=routes, breaker=breaker, limits={"redis_url": redis_url})


def chat(live: LiveServer) -> httpx.Response:
    body = {"model": "smart", "messages": HI, "max_tokens": 4}
    return httpx.post(f"{live.base_url}/v1/chat/completions", json=body, timeout=30)


def breaker_of(live: LiveServer) -> str:
    routes = httpx.get(f"{live.base_url}/api/providers").json()["routes"]
    state: str = next(r for r in routes if r["name"] == "smart")["targets"][0]["breaker"]
    return state


def attempts_on(live: LiveServer, target: str) -> int:
    rows = httpx.get(f"{live.base_url}/api/usage", params={"by": "target"}).json()["rows"]
    return sum(int(row["requests"]) for row in rows if row["target"] == target)


def test_a_breaker_opened_by_one_instance_sends_the_other_to_the_backup_at_once_until_a_probe_closes_both(
    make_server: ServerFactory, backup: LiveServer, upstream: LiveServer, redis_url: str
) -> None:
    a = front(make_server, upstream.base_url, backup, redis_url)  # upstream not started: refused
    b = front(make_server, upstream.base_url, backup, redis_url)
    for _ in range(2):
        r = chat(a)
        assert r.status_code == 200 and r.headers["x-llmhost-target"] == BACKUP, r.text
    assert breaker_of(a) == "open"
    wait_until(lambda: breaker_of(b) == "open", timeout=5, what="B's breaker open")
    r = chat(b)  # B never sent anything to the refused port, and does not now
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == BACKUP
    assert attempts_on(b, TARGET) == 0 and attempts_on(a, TARGET) == 2
    upstream.start(wait_ready=False)  # the target recovers
    wait_until(lambda: breaker_of(b) == "half_open", timeout=5, what="B half-open after the cooldown")
    r = chat(b)  # B's half-open probe goes out and succeeds
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == TARGET, r.text
    assert breaker_of(b) == "closed"
    wait_until(lambda: breaker_of(a) == "closed", timeout=5, what="A's breaker closed by B's probe")
    assert len([q for q in recorded(upstream) if q["path"] == "/v1/chat/completions"]) == 1
    r = chat(a)
    assert r.headers["x-llmhost-target"] == TARGET


def test_with_redis_down_breakers_still_open_locally_and_requests_never_fail(
    make_server: ServerFactory, backup: LiveServer
) -> None:
    live = front(
        make_server, f"http://127.0.0.1:{closed_port()}", backup, f"redis://127.0.0.1:{closed_port()}/0"
    )
    for _ in range(3):
        r = chat(live)
        assert r.status_code == 200 and r.headers["x-llmhost-target"] == BACKUP, r.text
    assert breaker_of(live) == "open"
    assert attempts_on(live, TARGET) == 2  # the third request did not try the open target
