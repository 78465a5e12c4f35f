"""What sharing limits through Redis costs (issue 17): budget reserve + settle, and breaker propagation.

    .venv/bin/python bench/shared_limits.py [--calls 2000] [--openings 20]

Starts a real ``redis-server`` on loopback (tests/redis_server.py) and measures, side by side:

- reserve + settle of one budget request, in process (:class:`MemoryLedger`) and in Redis
  (:class:`RedisLedger`): p50 and p99 over ``--calls`` sequential pairs;
- ``--calls`` concurrent reserves on one instance (wall time);
- how long an opening of one instance's breaker takes to open another instance's (SharedBreakers over
  one Redis): median and max over ``--openings`` openings.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmhost.router.breaker import BreakerState, CircuitBreaker  # noqa: E402
from llmhost.router.shared_breakers import SharedBreakers  # noqa: E402
from llmhost.security.budgets import Ledger, MemoryLedger  # noqa: E402
from llmhost.security.redis_ledger import RedisLedger  # noqa: E402
from tests.redis_server import start_redis  # noqa: E402


def _nothing_spent(_key_id: str) -> float:
    return 0.0


async def ledger_costs(name: str, ledger: Ledger, calls: int) -> None:
    await ledger.reserve("k", 1e9, 0.0)  # seeds the counter; warms the connection
    took: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        got = await ledger.reserve("k", 1e9, 0.001)
        await ledger.settle("k", got.ticket, 0.0005)
        took.append(time.perf_counter() - started)
    took.sort()
    p50, p99 = took[len(took) // 2], took[min(len(took) - 1, len(took) * 99 // 100)]
    started = time.perf_counter()
    await asyncio.gather(*(ledger.reserve("c", 1e9, 0.001) for _ in range(calls)))
    wall = time.perf_counter() - started
    print(
        f"{name:>6}: reserve+settle p50 {p50 * 1e6:7.0f} us  p99 {p99 * 1e6:7.0f} us   "
        f"{calls} concurrent reserves {wall:.3f} s"
    )
    await ledger.aclose()


async def breaker_propagation(url: str, openings: int) -> None:
    a, b = SharedBreakers(url), SharedBreakers(url)
    here, there = CircuitBreaker(1, 60, 0.2), CircuitBreaker(1, 60, 0.2)
    a.attach("t", here)
    b.attach("t", there)
    a.start()
    b.start()
    await asyncio.sleep(0.3)  # both subscribed
    delays: list[float] = []
    try:
        for _ in range(openings):
            started = time.perf_counter()
            here.record_failure()
            while there.state is not BreakerState.OPEN:
                await asyncio.sleep(0)
            delays.append(time.perf_counter() - started)
            here.record_success()
            while there.state is not BreakerState.CLOSED:
                await asyncio.sleep(0)
    finally:
        await a.aclose()
        await b.aclose()
    print(
        f"breaker opened on A, open on B after: median {statistics.median(delays) * 1e3:.2f} ms, "
        f"max {max(delays) * 1e3:.2f} ms ({openings} openings)"
    )


async def main(calls: int, openings: int) -> None:
    server = start_redis()
    try:
        await ledger_costs("memory", MemoryLedger(_nothing_spent), calls)
        await ledger_costs("redis", RedisLedger(server.new_database(), _nothing_spent), calls)
        await breaker_propagation(server.new_database(), openings)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--openings", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.openings))
