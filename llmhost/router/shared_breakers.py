"""Circuit breakers shared through Redis (``limits.redis_url``): one target's state across instances.

The local :class:`~llmhost.router.breaker.CircuitBreaker` stays the fast path: the gateway asks it
synchronously, and no request waits on Redis, except the one probe of a half-open breaker. What a local
breaker's own verdicts change goes to Redis from a queue, in order, on a background task:

- a failure is added to the target's shared window (a sorted set) by one Lua script, which opens the
  target when the failures of every instance within ``window`` reach ``failures``: it sets an
  ``open`` key that expires after ``cooldown`` and PUBLISHes the opening;
- a local opening (the threshold, a failed probe, a failed health check) sets that key and publishes;
- a close (a probe succeeded) deletes the target's keys and publishes; a success after failures clears
  the shared window.

Every instance subscribes to the channel (a second background task) and opens or closes its own breaker
as told; on start, and after each reconnect, it reads which targets are open now. When the cooldown
ends, one probe goes out across all instances: the half-open breaker that wants to probe first claims a
key (``SET NX``, expiring after ``cooldown`` so a probe lost with its instance frees the next); the
others refuse (their requests fall back) until the probe's verdict arrives.

Redis unreachable: a warning is logged once, and each instance's breakers go on alone (every verdict
still counts locally, a half-open breaker probes for itself); requests never fail for it. The listener
reconnects every few seconds and reads the open targets again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from typing import Any

from redis.exceptions import RedisError

from llmhost.redis_store import redis_client, where
from llmhost.router.breaker import BreakerEvent, CircuitBreaker

__all__ = ["SharedBreakers"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 0.5  # the probe claim is the one command a request waits for
_QUEUE = 1024  # verdicts waiting to be told; past that (Redis hanging) they are dropped
_RECONNECT_S = (0.5, 5.0)  # the listener's first and longest wait between reconnects

# KEYS: failures, open, probe. ARGV: window ms, threshold, cooldown ms, member, channel, target.
_FAILURE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - window))
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('PUBLISH', ARGV[5], cjson.encode({target = ARGV[6], state = 'open', ms = tonumber(ARGV[3])}))
return 1
"""
# KEYS: failures, open, probe. ARGV: cooldown ms, channel, target.
_OPEN = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('PUBLISH', ARGV[2], cjson.encode({target = ARGV[3], state = 'open', ms = tonumber(ARGV[1])}))
return 1
"""
# KEYS: failures, open, probe. ARGV: channel, target.
_CLOSE = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[1], cjson.encode({target = ARGV[2], state = 'closed'}))
return 1
"""
# KEYS: failures, open, probe. ARGV: instance, cooldown ms. 1: this instance probes.
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class SharedBreakers:
    """The breakers of one gateway, kept in step with every other instance on the same Redis database.

    :meth:`attach` each breaker, :meth:`start` on the event loop that serves requests (the server's
    lifespan), :meth:`aclose` at shutdown."""

    def __init__(self, url: str, *, prefix: str = "llmhost:breaker:") -> None:
        self.url = url
        self.prefix = prefix
        self.instance = os.urandom(8).hex()
        self._client: Any = redis_client(url, connect_timeout=_TIMEOUT_S, timeout=_TIMEOUT_S, retries=0)
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"{prefix}{db}:events"  # channels span databases; instances share one database
        self._failure = self._client.register_script(_FAILURE)
        self._open = self._client.register_script(_OPEN)
        self._close = self._client.register_script(_CLOSE)
        self._claim = self._client.register_script(_CLAIM)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, BreakerEvent]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.reachable = True  # False from the first failed command until one succeeds again

    def _keys(self, target: str) -> list[str]:
        slot = f"{self.prefix}{{{target}}}"  # one hash slot per target (Redis Cluster)
        return [f"{slot}:failures", f"{slot}:open", f"{slot}:probe"]

    def attach(self, target: str, breaker: CircuitBreaker) -> None:
        """Share ``breaker``, the one of ``target`` (a target key such as ``openai/gpt-4o``)."""
        self._breakers[target] = breaker
        breaker.on_change = functools.partial(self._changed, target)

    # ----- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start telling and listening (on the running event loop); verdicts before this stay local."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(_QUEUE)
        self._tasks = [
            asyncio.create_task(self._tell_forever(), name="breakers: tell"),
            asyncio.create_task(self._listen_forever(), name="breakers: listen"),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._loop = self._queue = None
        await self._client.aclose()

    # ----- this instance's verdicts -> Redis ---------------------------------------------------------
    def _changed(self, target: str, event: BreakerEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(self._enqueue, target, event)

    def _enqueue(self, target: str, event: BreakerEvent) -> None:
        if self._queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait((target, event))

    async def _tell_forever(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            target, event = await queue.get()
            try:
                await self._tell(target, event)
            except (RedisError, OSError) as exc:
                self._lost(exc)
            else:
                self._regained()

    async def _tell(self, target: str, event: BreakerEvent) -> None:
        breaker = self._breakers[target]
        keys = self._keys(target)
        if event == "failure":
            window, cooldown, member = _ms(breaker.window), _ms(breaker.cooldown), os.urandom(6).hex()
            args = [window, breaker.threshold, cooldown, member, self.channel, target]
            await self._failure(keys=keys, args=args)
        elif event == "open":
            await self._open(keys=keys, args=[_ms(breaker.cooldown), self.channel, target])
        elif event == "close":
            await self._close(keys=keys, args=[self.channel, target])
        else:  # "reset": a success after failures
            await self._client.delete(keys[0])

    async def claim_probe(self, target: str, cooldown: float) -> bool:
        """May this instance send the half-open probe of ``target``? False while another instance's
        probe is out (or the target was opened again meanwhile); True when Redis cannot tell."""
        if self._loop is None or not self.reachable:
            return True
        try:
            claimed = await self._claim(keys=self._keys(target), args=[self.instance, _ms(cooldown)])
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return True
        self._regained()
        return bool(claimed)

    # ----- the other instances' verdicts -> this instance's breakers ---------------------------------
    async def _listen_forever(self) -> None:
        wait = _RECONNECT_S[0]
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._read_open_targets()  # after subscribing: no opening falls in between
                self._regained()
                wait = _RECONNECT_S[0]
                async for message in pubsub.listen():
                    self._apply(message.get("data"))
            except (RedisError, OSError) as exc:
                self._lost(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(wait)
            wait = min(wait * 2, _RECONNECT_S[1])

    async def _read_open_targets(self) -> None:
        targets = list(self._breakers)
        if not targets:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for target in targets:
                pipe.pttl(self._keys(target)[1])
            left = await pipe.execute()
        for target, ms in zip(targets, left, strict=True):
            if int(ms) > 0:
                self._breakers[target].open_remotely(int(ms) / 1000)

    def _apply(self, data: Any) -> None:
        try:
            message = json.loads(data)
            breaker = self._breakers.get(message["target"])
            state = message["state"]
        except (TypeError, ValueError, KeyError):
            log.debug("breakers: ignored a message on %s: %r", self.channel, data)
            return
        if breaker is None:
            return  # a target this instance does not route to
        if state == "open":
            breaker.open_remotely(float(message.get("ms", 0)) / 1000)
        elif state == "closed":
            breaker.close_remotely()

    # ----- Redis's health ----------------------------------------------------------------------------
    def _lost(self, exc: BaseException) -> None:
        if self.reachable:
            self.reachable = False
            log.warning(
                "breakers: Redis at %s did not answer (%s); each instance's breakers go on alone until then",
                where(self.url),
                type(exc).__name__,
            )

    def _regained(self) -> None:
        if not self.reachable:
            self.reachable = True
            log.info("breakers: Redis at %s answers again; breaker state is shared again", where(self.url))
