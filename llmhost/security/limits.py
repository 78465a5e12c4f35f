"""Per-key rate limits: requests and tokens per minute, exact over any 60-second window.

A token bucket with capacity N and refill N/min admits up to 2N in the first minute (a full bucket plus a
minute of refill), so it cannot promise "≤ N per minute". This is a sliding-window log instead: every
admission is an entry (time, amount); a request is admitted only if the entries of the last 60 seconds
plus its own amount stay within the limit, so no 60-second window ever holds more than N. The log holds
one entry per request, not per token, and the check is atomic (a lock here; one Lua script in Redis).

Token limits reserve an estimate when a request is admitted (an upper bound of the prompt's tokens plus
``max_tokens``) and settle it to the tokens really used when the request ends, cancelled or failed ones
included, so an abandoned request holds nothing beyond what it consumed.

Backends: :class:`MemoryWindows` (one process, the default) and :class:`RedisWindows` (``limits.redis_url``:
several instances share the counts).
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from redis.exceptions import RedisError

from llmhost.core.stage import Answer, Request, StageBase
from llmhost.core.types import EmbedRequest, InferenceRequest, Operation, RequestContext, Result
from llmhost.errors import RateLimitError
from llmhost.redis_store import redis_client, unreachable, where

__all__ = ["Admission", "LimitStage", "MemoryWindows", "RedisWindows", "Windows", "prompt_token_bound"]

log = logging.getLogger(__name__)

WINDOW_S = 60.0
DEFAULT_MAX_TOKENS = 4096  # what a token limit reserves for a request that sets no max_tokens


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of one window check: admitted (with a ticket to settle) or when to retry."""

    admitted: bool
    ticket: str
    limit: int
    remaining: int
    reset_s: float  # seconds until the window has room again (for the x-ratelimit-reset-* headers)


class Windows(Protocol):
    async def acquire(self, bucket: str, amount: int, limit: int) -> Admission: ...

    async def settle(self, bucket: str, ticket: str, amount: int) -> None: ...

    async def aclose(self) -> None: ...


class _Log:
    """One bucket's admissions (ticket -> (time, amount)), oldest first, and their running total."""

    __slots__ = ("entries", "used")

    def __init__(self) -> None:
        self.entries: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self.used = 0

    def expire(self, horizon: float) -> None:
        entries = self.entries
        while entries:
            ticket, (ts, amount) = next(iter(entries.items()))
            if ts > horizon:
                break
            del entries[ticket]
            self.used -= amount


class MemoryWindows:
    """Sliding-window logs in this process; each check is O(1) amortised (a running total per bucket)."""

    def __init__(self, window: float = WINDOW_S) -> None:
        self.window = window
        self._logs: dict[str, _Log] = {}
        self._lock = threading.Lock()
        self._tickets = itertools.count(1)

    async def acquire(self, bucket: str, amount: int, limit: int) -> Admission:
        now = time.monotonic()
        with self._lock:
            log = self._logs.get(bucket)
            if log is None:
                log = self._logs[bucket] = _Log()
            log.expire(now - self.window)
            used = log.used
            if used + amount <= limit:
                ticket = str(next(self._tickets))
                log.entries[ticket] = (now, amount)
                log.used += amount
                oldest = next(iter(log.entries.values()))[0]
                return Admission(
                    True, ticket, limit, limit - used - amount, max(0.0, oldest + self.window - now)
                )
            reset = self._reset(list(log.entries.values()), used, amount, limit, now)
            return Admission(False, "", limit, max(0, limit - used), reset)

    def _reset(
        self, entries: list[tuple[float, int]], used: int, amount: int, limit: int, now: float
    ) -> float:
        """Seconds until enough old entries leave the window for ``amount`` to fit (inf: never)."""
        if amount > limit:
            return math.inf
        freed = 0
        for ts, a in entries:
            freed += a
            if used - freed + amount <= limit:
                return max(0.0, ts + self.window - now)
        return self.window

    def held(self, bucket: str) -> int:
        """What a bucket's window holds now (for tests and metrics)."""
        with self._lock:
            log = self._logs.get(bucket)
            if log is None:
                return 0
            log.expire(time.monotonic() - self.window)
            return log.used

    async def settle(self, bucket: str, ticket: str, amount: int) -> None:
        with self._lock:
            log = self._logs.get(bucket)
            if log is not None and ticket in log.entries:
                ts, before = log.entries[ticket]
                log.entries[ticket] = (ts, max(0, amount))
                log.used += max(0, amount) - before

    async def aclose(self) -> None:
        return None


# KEYS[1]: sorted set ticket -> admission time; KEYS[2]: hash ticket -> amount; KEYS[3]: their total.
# ARGV: amount, limit, window (s), ticket. Returns {admitted, remaining, reset_ms}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local amount, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #expired > 0 then
  local gone = 0
  for _, v in ipairs(redis.call('HMGET', KEYS[2], unpack(expired))) do gone = gone + (tonumber(v) or 0) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('HDEL', KEYS[2], unpack(expired))
  redis.call('DECRBY', KEYS[3], gone)
end
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
local ttl = math.ceil(window * 1000) + 1000
if used + amount <= limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[4], amount)
  redis.call('INCRBY', KEYS[3], amount)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, limit - used - amount, math.ceil((tonumber(first[2]) + window - now) * 1000)}
end
if amount > limit then return {0, limit - used, -1} end
local freed = 0
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  freed = freed + tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
  if used - freed + amount <= limit then
    return {0, limit - used, math.ceil((tonumber(entries[i + 1]) + window - now) * 1000)}
  end
end
return {0, limit - used, math.ceil(window * 1000)}
"""
_SETTLE = """
local before = redis.call('HGET', KEYS[1], ARGV[1])
if before then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('INCRBY', KEYS[2], tonumber(ARGV[2]) - tonumber(before))
end
return 0
"""


class RedisWindows:
    """Sliding-window logs in Redis, shared by every instance that points at the same server.

    Redis down: :meth:`acquire` raises the 503 of :func:`~llmhost.redis_store.unreachable` (a limit
    nobody can check is not let past); :meth:`settle` logs a warning (the entry ages out of the window)."""

    def __init__(self, url: str, *, prefix: str = "llmhost:rl:", window: float = WINDOW_S) -> None:
        self.url = url
        self.window = window
        self.prefix = prefix
        self._client: Any = redis_client(url)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._settle = self._client.register_script(_SETTLE)

    def _keys(self, bucket: str) -> list[str]:
        return [f"{self.prefix}{bucket}:t", f"{self.prefix}{bucket}:a", f"{self.prefix}{bucket}:n"]

    async def acquire(self, bucket: str, amount: int, limit: int) -> Admission:
        ticket = os.urandom(8).hex()
        try:
            admitted, remaining, reset_ms = await self._acquire(
                keys=self._keys(bucket), args=[amount, limit, self.window, ticket]
            )
        except RedisError as exc:
            raise unreachable("rate limits", self.url, exc) from exc
        reset = math.inf if int(reset_ms) < 0 else int(reset_ms) / 1000
        return Admission(bool(admitted), ticket if admitted else "", limit, max(0, int(remaining)), reset)

    async def settle(self, bucket: str, ticket: str, amount: int) -> None:
        try:
            await self._settle(keys=self._keys(bucket)[1:], args=[ticket, max(0, amount)])
        except RedisError as exc:
            log.warning(
                "rate limit %s: could not settle in Redis at %s (%s); the estimate ages out of the window",
                bucket,
                where(self.url),
                type(exc).__name__,
            )

    async def aclose(self) -> None:
        await self._client.aclose()


# ----- the stage -------------------------------------------------------------------------------------
def prompt_token_bound(request: Request) -> int:
    """An upper bound of the prompt's tokens: its UTF-8 bytes (no tokenizer makes more tokens than bytes,
    byte fallback included) plus room for the chat template's markup."""
    if isinstance(request, EmbedRequest):
        return sum(len(t.encode()) if isinstance(t, str) else len(t) for t in request.inputs) + 8
    prefix = len(request.prefix_tokens)
    if request.kind == "completion":
        p = request.prompt
        return prefix + (len(p.encode()) if isinstance(p, str) else len(p)) + 8
    text = sum(len(m.content.encode()) + 16 for m in request.messages)
    tools = sum(len(repr(t).encode()) for t in request.tools)
    return prefix + text + tools + 64


def completion_token_bound(request: Request) -> int:
    if isinstance(request, EmbedRequest):
        return 0
    n = request.sampling.n or 1
    return n * (request.sampling.max_tokens or DEFAULT_MAX_TOKENS)


def _fmt_reset(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``250ms``."""
    if seconds < 1:
        return f"{max(1, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


def used_tokens(answer: Answer | None) -> int | None:
    if isinstance(answer, Result):
        return answer.usage.prompt_tokens + answer.usage.completion_tokens
    if answer is not None:
        return answer.usage.prompt_tokens
    return None


class LimitStage(StageBase):
    """The pipeline's "limits" stage: a key's ``rpm`` and ``tpm``; 429 with ``Retry-After`` and OpenAI's
    ``x-ratelimit-*`` headers when a window is full. Keys without limits pass untouched."""

    name = "limits"

    def __init__(self, windows: Windows) -> None:
        self.windows = windows
        # Requests refused, by window ("requests", "tokens"): ``llmhost_rate_limit_rejections_total``.
        self.rejections: collections.Counter[str] = collections.Counter()

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        p = ctx.principal
        if p.key_id is None or (p.rpm is None and p.tpm is None):
            return request
        headers: dict[str, str] = {}
        if p.rpm is not None:
            headers.update(await self._admit_request(p.key_id, p.name, p.rpm))
        if p.tpm is not None and not ctx.attrs.get("counting"):
            reserve = prompt_token_bound(request) + completion_token_bound(request)
            got = await self.windows.acquire(f"{p.key_id}:tpm", reserve, p.tpm)
            headers.update(_headers("tokens", got))
            if not got.admitted:
                self.rejections["tokens"] += 1
                hint = " (lower max_tokens)" if math.isinf(got.reset_s) else ""
                raise RateLimitError(
                    f"rate limit reached for key {p.name!r}: {p.tpm} tokens per minute, this request may "
                    f"use up to {reserve}{hint}",
                    headers=headers,
                )
            ctx.attrs["limits.tpm_ticket"] = got.ticket
        ctx.response_headers.update(headers)
        return request

    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        await self._settle(ctx, used_tokens(answer))
        return answer

    async def before_operation(self, ctx: RequestContext, op: Operation) -> Operation:
        """An operation counts against ``rpm`` like any request; it uses no tokens."""
        p = ctx.principal
        if p.key_id is None or p.rpm is None:
            return op
        await self._admit_request(p.key_id, p.name, p.rpm)
        return op

    async def _admit_request(self, key_id: str, name: str, rpm: int) -> dict[str, str]:
        """One request into the key's ``rpm`` window: its ``x-ratelimit-*-requests`` headers, or a 429."""
        got = await self.windows.acquire(f"{key_id}:rpm", 1, rpm)
        headers = _headers("requests", got)
        if not got.admitted:
            self.rejections["requests"] += 1
            raise RateLimitError(
                f"rate limit reached for key {name!r}: {rpm} requests per minute", headers=headers
            )
        return headers

    async def on_error(self, ctx: RequestContext, exc: BaseException) -> None:
        used = sum(a.usage.prompt_tokens + a.usage.completion_tokens for a in ctx.attempts)
        await self._settle(ctx, used)

    async def _settle(self, ctx: RequestContext, used: int | None) -> None:
        ticket = ctx.attrs.pop("limits.tpm_ticket", None)
        if ticket is not None and ctx.principal.key_id is not None:
            await self.windows.settle(f"{ctx.principal.key_id}:tpm", ticket, used or 0)


def _headers(kind: str, got: Admission) -> dict[str, str]:
    headers = {
        f"x-ratelimit-limit-{kind}": str(got.limit),
        f"x-ratelimit-remaining-{kind}": str(got.remaining),
        f"x-ratelimit-reset-{kind}": _fmt_reset(0 if math.isinf(got.reset_s) else got.reset_s),
    }
    if not got.admitted and not math.isinf(got.reset_s):
        headers["retry-after"] = str(max(1, math.ceil(got.reset_s)))
    return headers


def with_max_tokens(request: InferenceRequest, max_tokens: int) -> InferenceRequest:
    return replace(request, sampling=replace(request.sampling, max_tokens=max_tokens))
