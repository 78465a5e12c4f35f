"""Budgets kept in Redis (``limits.redis_url``): one key's spend and reservations, exact across instances.

Per key id, four Redis keys in one hash slot: ``spent`` (nano-USD, an integer, so sums are exact),
``holds`` (ticket -> reserved nano-USD), ``deadlines`` (ticket -> when its reservation lapses) and
``held`` (the holds' total). A check-and-reserve is one Lua script: it drops the holds whose deadline
passed, then admits the amount only if budget - spent - held leaves room for it, so concurrent requests
on every instance see one count. Settling deletes the hold and adds the real cost to ``spent``.

``spent`` starts from the usage log: the first instance that finds it missing sums the key's usage rows
and sets it only if it is still missing (``SET NX``), so a second instance, whose own usage writer may
not have flushed yet, never overwrites it; from then on the Redis counter is the truth. If Redis loses
its data (a restart without persistence), the next request seeds it again from the log.

A reservation lapses :data:`RESERVATION_TTL_S` after it was made: an instance that dies mid-request holds
nothing for longer than that. A request still running then no longer holds its reservation (its cost is
still added when it ends), so only requests longer than the bound can take a budget past its end.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from llmhost.redis_store import redis_client, unreachable, where
from llmhost.security.budgets import Reservation

__all__ = ["RESERVATION_TTL_S", "RedisLedger"]

log = logging.getLogger(__name__)

RESERVATION_TTL_S = 900.0
_NANO = 1_000_000_000  # Redis counts nano-USD

# KEYS: spent, holds, deadlines, held. ARGV: budget, amount, ticket ("": only tell the room), ttl (ms).
# Returns {state, room}: state -1 = spent not seeded yet, 0 = refused (or a query), 1 = reserved.
_RESERVE = """
local spent = redis.call('GET', KEYS[1])
if not spent then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #lapsed > 0 then
  local gone = 0
  for _, ticket in ipairs(lapsed) do
    gone = gone + (tonumber(redis.call('HGET', KEYS[2], ticket)) or 0)
    redis.call('HDEL', KEYS[2], ticket)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('DECRBY', KEYS[4], gone)
end
local room = tonumber(ARGV[1]) - tonumber(spent) - tonumber(redis.call('GET', KEYS[4]) or '0')
local amount = tonumber(ARGV[2])
if ARGV[3] == '' or amount > room then return {0, room} end
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], ARGV[3], amount)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[3])
redis.call('INCRBY', KEYS[4], amount)
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
return {1, room - amount}
"""
# KEYS: spent, holds, deadlines, held. ARGV: ticket, cost. Returns 1 if the cost was added, 0 if spent
# is gone.
_SETTLE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DECRBY', KEYS[4], held)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[2])
return 1
"""


def _nanos(usd: float) -> int:
    return round(usd * _NANO)


class RedisLedger:
    """Spent and reserved USD per key id in Redis, shared by every instance on the same server.

    Redis down: :meth:`reserve` and :meth:`room` raise the 503 of
    :func:`~llmhost.redis_store.unreachable` (a budget nobody can check is not let past); :meth:`settle`
    logs a warning instead, since the answer is already made (the cost is in the usage log, and the
    reservation lapses on its own).
    """

    def __init__(
        self,
        url: str,
        spent_in_log: Callable[[str], float],
        *,
        prefix: str = "llmhost:budget:",
        reservation_ttl: float = RESERVATION_TTL_S,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.reservation_ttl = reservation_ttl
        self._spent_in_log = spent_in_log
        self._client: Any = redis_client(url)
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)

    def _keys(self, key_id: str) -> list[str]:
        slot = f"{self.prefix}{{{key_id}}}"  # one hash slot per key id (Redis Cluster)
        return [f"{slot}:spent", f"{slot}:holds", f"{slot}:deadlines", f"{slot}:held"]

    async def _seed(self, key_id: str) -> None:
        """Set ``spent`` from the usage log unless another instance already has."""
        spent = await asyncio.to_thread(self._spent_in_log, key_id)
        if await self._client.set(self._keys(key_id)[0], _nanos(spent), nx=True):
            log.info("budget of key %s seeded in Redis from the usage log: $%.6f", key_id, spent)

    async def _run(self, key_id: str, budget: float, amount: float, ticket: str) -> tuple[int, float]:
        args = [_nanos(budget), _nanos(amount), ticket, max(1, round(self.reservation_ttl * 1000))]
        try:
            for _ in range(3):  # seeded at the first miss; a second is Redis evicting under memory pressure
                state, room = await self._reserve(keys=self._keys(key_id), args=args)
                if int(state) >= 0:
                    return int(state), int(room) / _NANO
                await self._seed(key_id)
        except RedisError as exc:
            raise unreachable("budgets", self.url, exc) from exc
        raise unreachable("budgets", self.url, RuntimeError("the spent counter keeps vanishing"))

    async def reserve(self, key_id: str, budget: float, amount: float) -> Reservation:
        ticket = os.urandom(8).hex()
        state, room = await self._run(key_id, budget, amount, ticket)
        return Reservation(state == 1, ticket if state == 1 else "", room)

    async def room(self, key_id: str, budget: float) -> float:
        return (await self._run(key_id, budget, 0.0, ""))[1]

    async def settle(self, key_id: str, ticket: str, cost: float) -> None:
        try:
            added = await self._settle(keys=self._keys(key_id), args=[ticket, _nanos(cost)])
        except RedisError as exc:
            log.warning(
                "budget of key %s: could not settle $%.6f in Redis at %s (%s); it is in the usage log, and "
                "the reservation lapses within %.0f s",
                key_id,
                cost,
                where(self.url),
                type(exc).__name__,
                self.reservation_ttl,
            )
            return
        if not added:
            log.warning("budget of key %s: Redis lost its spent counter; the next request seeds it", key_id)

    async def spent(self, key_id: str) -> float:
        """What the key has spent, as Redis counts it (seeded from the usage log if missing)."""
        try:
            for _ in range(3):
                value = await self._client.get(self._keys(key_id)[0])
                if value is not None:
                    return int(value) / _NANO
                await self._seed(key_id)
        except RedisError as exc:
            raise unreachable("budgets", self.url, exc) from exc
        raise unreachable("budgets", self.url, RuntimeError("the spent counter keeps vanishing"))

    async def aclose(self) -> None:
        await self._client.aclose()
