"""Redis as the store instances share (``limits.redis_url``): rate-limit windows, budgets, breaker state.

Every user makes its own client here, so each gets bounded timeouts: a Redis that does not answer ends a
command within :data:`COMMAND_TIMEOUT_S` instead of holding a request forever. Its pool holds at most
:data:`MAX_CONNECTIONS`; past that a command waits for a free connection (redis-py's default pool would
fail it at once: 2,000 concurrent reserves on one instance did). What a failure means is
the user's choice: the rate-limit and budget stages refuse the request (:func:`unreachable`, a 503; a
limit nobody can check is not let past), the breakers carry on in this process alone.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from llmhost.errors import NotReadyError

__all__ = [
    "COMMAND_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "redis_client",
    "unreachable",
    "where",
]

CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0  # also the longest wait for a free connection of the pool
MAX_CONNECTIONS = 64


def redis_client(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    timeout: float = COMMAND_TIMEOUT_S,
    retries: int | None = None,
    max_connections: int = MAX_CONNECTIONS,
) -> Any:
    """A client for ``url`` (connections are made lazily, on the event loop that first uses them).
    ``retries``: how often a command is retried on a connection error (None: redis-py's default)."""
    options: dict[str, Any] = {"socket_connect_timeout": connect_timeout, "socket_timeout": timeout}
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **options
    )
    return aioredis.Redis.from_pool(pool)


def where(url: str) -> str:
    """``host:port/db`` of a Redis URL, without its credentials (for messages and logs)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 6379}{parts.path or '/0'}"


def unreachable(what: str, url: str, exc: BaseException) -> NotReadyError:
    """The 503 a request gets when the Redis that keeps ``what`` cannot be asked."""
    return NotReadyError(
        f"{what} are kept in Redis at {where(url)}, which did not answer ({type(exc).__name__}); the "
        "request is refused rather than let past a limit nobody can check"
    )
