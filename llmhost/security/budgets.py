"""Per-key budgets in USD: reserved before the call, settled after, never exceeded.

Before a request of a key with a budget is generated, its worst-case cost is reserved: an upper bound of
its prompt tokens (:func:`~llmhost.security.limits.prompt_token_bound`) times the route's highest input
price plus its completion tokens (``max_tokens`` times ``n``) times the highest output price (a cascade route
reserves every target it may call). If spent + reserved + this request would pass the budget, it is
refused with OpenAI's 429 ``insufficient_quota``; a request that sets no ``max_tokens`` on a priced route
gets ``min(4096, what the budget still affords)``. When the request ends (answered, failed or
cancelled) the reservation is replaced by what its attempts really cost.

Where spent and reserved live is the :class:`Ledger`: :class:`MemoryLedger` in this process (the
default; check-and-reserve under one lock with no await in between, so 50 concurrent requests cannot all
see the same room) or :class:`~llmhost.security.redis_ledger.RedisLedger` (``limits.redis_url``: one Lua
script per check-and-reserve, exact across every instance on that Redis).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llmhost.core.stage import Answer, Request, StageBase
from llmhost.core.types import InferenceRequest, RequestContext
from llmhost.errors import RateLimitError
from llmhost.security.limits import (
    DEFAULT_MAX_TOKENS,
    completion_token_bound,
    prompt_token_bound,
    with_max_tokens,
)

__all__ = ["BudgetStage", "Ledger", "MemoryLedger", "Reservation"]

_PER_TOKEN = 1e-6  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer of one check-and-reserve: a ticket to settle, or none, and the key's room in USD (left
    after this reservation when admitted, before it when refused)."""

    admitted: bool
    ticket: str
    room: float


class Ledger(Protocol):
    """Spent and reserved USD per key id. Spent starts from the usage log (read once per key)."""

    async def reserve(self, key_id: str, budget: float, amount: float) -> Reservation: ...

    async def room(self, key_id: str, budget: float) -> float: ...

    async def settle(self, key_id: str, ticket: str, cost: float) -> None:
        """Replace the ticket's reservation by what the request really cost."""
        ...

    async def spent(self, key_id: str) -> float: ...

    async def aclose(self) -> None: ...


class MemoryLedger:
    """Spent and reserved USD per key id, for one process. What a key has spent is the sum of its usage
    rows (read once per key, after the usage writer has flushed) plus what this process settled since."""

    def __init__(self, spent_in_log: Callable[[str], float]) -> None:
        self._spent_in_log = spent_in_log
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._tickets: dict[str, float] = {}
        self._next = itertools.count(1)
        self._lock = threading.Lock()

    async def _load(self, key_id: str) -> None:
        if key_id in self._spent:
            return
        spent = await asyncio.to_thread(self._spent_in_log, key_id)
        with self._lock:
            self._spent.setdefault(key_id, spent)

    def _room(self, key_id: str, budget: float) -> float:
        return budget - self._spent.get(key_id, 0.0) - self._reserved.get(key_id, 0.0)

    async def reserve(self, key_id: str, budget: float, amount: float) -> Reservation:
        await self._load(key_id)
        with self._lock:
            room = self._room(key_id, budget)
            if amount > room + 1e-12:
                return Reservation(False, "", room)
            ticket = str(next(self._next))
            self._tickets[ticket] = amount
            self._reserved[key_id] = self._reserved.get(key_id, 0.0) + amount
            return Reservation(True, ticket, room - amount)

    async def room(self, key_id: str, budget: float) -> float:
        await self._load(key_id)
        with self._lock:
            return self._room(key_id, budget)

    async def settle(self, key_id: str, ticket: str, cost: float) -> None:
        with self._lock:
            reserved = self._tickets.pop(ticket, 0.0)
            self._reserved[key_id] = max(0.0, self._reserved.get(key_id, 0.0) - reserved)
            self._spent[key_id] = self._spent.get(key_id, 0.0) + cost

    async def spent(self, key_id: str) -> float:
        await self._load(key_id)
        with self._lock:
            return self._spent.get(key_id, 0.0)

    async def aclose(self) -> None:
        return None


def _prices(route: Any) -> tuple[float, float, int]:
    """(highest input price, highest output price, how many targets one request may pay for)."""
    targets = list(getattr(route, "targets", ()) or ())
    if not targets:
        return 0.0, 0.0, 1
    ins = [t.settings.input_price for t in targets]
    outs = [t.settings.output_price for t in targets]
    calls = len(targets) if getattr(route, "cascade", None) else 1
    return max(ins), max(outs), calls


class BudgetStage(StageBase):
    """The pipeline's "budget" stage (after "route", which knows the prices)."""

    name = "budget"

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        # Requests refused for want of budget: ``llmhost_rate_limit_rejections_total{kind="budget"}``.
        self.rejections: collections.Counter[str] = collections.Counter()

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        p = ctx.principal
        if p.key_id is None or p.budget is None or ctx.attrs.get("counting"):
            return request  # counting tokens costs nothing
        in_price, out_price, calls = _prices(ctx.route)
        prompt_cost = prompt_token_bound(request) * in_price * _PER_TOKEN * calls
        if isinstance(request, InferenceRequest) and request.sampling.max_tokens is None and out_price > 0:
            per_token = out_price * _PER_TOKEN * calls * (request.sampling.n or 1)
            affordable = math.floor((await self.ledger.room(p.key_id, p.budget) - prompt_cost) / per_token)
            if affordable >= 1:
                request = with_max_tokens(request, min(affordable, DEFAULT_MAX_TOKENS))
        reserve = prompt_cost + completion_token_bound(request) * out_price * _PER_TOKEN * calls
        got = await self.ledger.reserve(p.key_id, p.budget, reserve)
        if not got.admitted:
            self.rejections["budget"] += 1
            raise RateLimitError(
                f"budget of key {p.name!r} is used up: ${max(0.0, got.room):.6f} of ${p.budget:g} left, "
                f"this request may cost up to ${reserve:.6f} (lower max_tokens)",
                code="insufficient_quota",
            )
        ctx.attrs["budget.ticket"] = got.ticket
        return request

    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        await self._settle(ctx)
        return answer

    async def on_error(self, ctx: RequestContext, exc: BaseException) -> None:
        await self._settle(ctx)

    async def _settle(self, ctx: RequestContext) -> None:
        ticket = ctx.attrs.pop("budget.ticket", None)
        if ticket is not None and ctx.principal.key_id is not None:
            await self.ledger.settle(ctx.principal.key_id, ticket, sum(a.cost for a in ctx.attempts))
