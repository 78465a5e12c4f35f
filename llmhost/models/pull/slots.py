"""Where pulls run for the HTTP API: threads of their own, at most ``max_concurrent_pulls`` at once.

A pull blocks a thread for its whole length (minutes for a large model, or until a stalled connection
times out). On asyncio's default executor it would take threads that every generation needs to acquire
its model (``asyncio.to_thread`` in :mod:`llmhost.local.backend`), so a few stuck pulls would stall all
inference. :class:`PullSlots` gives pulls a pool of their own, as large as the cap, and refuses a pull
over the cap at once (:class:`TooManyPullsError`, HTTP 429 with ``Retry-After``) rather than queueing it:
Ollama's clients retry a 429, and a queued pull would hold its HTTP request open without progress.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from llmhost.errors import EngineOverloadedError

__all__ = ["PullSlots", "TooManyPullsError"]

_RETRY_AFTER_S = 5


class TooManyPullsError(EngineOverloadedError):
    """``max_concurrent_pulls`` pulls are running already; :func:`~llmhost.errors.classify` maps it, as
    any overload, to 429 with ``Retry-After``."""


class PullSlots:
    """Runs pulls on a dedicated pool of ``limit`` threads; refuses one more while ``limit`` run."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="llmhost-pull")
        self._lock = threading.Lock()
        self._running = 0

    def submit(self, pull: Callable[[], None]) -> Future[None]:
        """Start ``pull`` on a pull thread; raise :class:`TooManyPullsError` when ``limit`` are running.

        The slot is held until ``pull`` returns, so a pull whose client went away still counts until it
        notices (at its next progress event, or when its connection times out).
        """
        with self._lock:
            if self._running >= self.limit:
                raise TooManyPullsError(
                    f"{self._running} pulls are in progress, the most this server runs at once "
                    "(max_concurrent_pulls); retry when one has finished",
                    retry_after=_RETRY_AFTER_S,
                )
            self._running += 1
        try:
            future = self._executor.submit(pull)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def _release(self) -> None:
        with self._lock:
            self._running -= 1
