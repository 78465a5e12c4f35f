"""Circuit breakers: stop sending traffic to a target that keeps failing, then probe it.

closed --(``failures`` within ``window`` s)--> open --(``cooldown`` s)--> half-open
half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open
half-open --(probe ends in a client error)--> half-open, the next request probes

Only the target's own failures count (the gateway's ``is_retryable``); a client's 4xx never does.

A breaker tells ``on_change`` (when set) what its own verdicts changed: ``"failure"`` (one more failure,
still closed), ``"open"``, ``"close"`` and ``"reset"`` (a success cleared the failures counted so far), so
that :mod:`llmhost.router.shared_breakers` can share them; what another instance decided arrives through
:meth:`CircuitBreaker.open_remotely` and :meth:`CircuitBreaker.close_remotely`, which tell nobody.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerEvent", "BreakerState", "CircuitBreaker"]

BreakerEvent = Literal["failure", "open", "close", "reset"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One target's breaker. Thread-safe; ``clock`` is injectable for tests."""

    def __init__(
        self,
        failures: int = 5,
        window: float = 30.0,
        cooldown: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.window = window
        self.cooldown = cooldown
        self._clock = clock
        self._failures: collections.deque[float] = collections.deque()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._probe_since = 0.0
        self._lock = threading.Lock()
        self.opened_count = 0
        # Called (outside the lock) with what this breaker's own verdicts changed; see the module doc.
        self.on_change: Callable[[BreakerEvent], None] | None = None

    def _tell(self, event: BreakerEvent | None) -> None:
        if event is not None and self.on_change is not None:
            self.on_change(event)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current_state()

    def _current_state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    def allow(self) -> bool:
        """May a request go to this target now? In half-open, one probe at a time is let through; a
        probe that has given no verdict for ``cooldown`` seconds (its stream was never read, say) no
        longer holds the next one back, so a lost verdict never leaves the target shut out for good."""
        with self._lock:
            state = self._current_state()
            if state is BreakerState.CLOSED:
                return True
            now = self._clock()
            if state is BreakerState.HALF_OPEN and (
                not self._probe_in_flight or now - self._probe_since >= self.cooldown
            ):
                self._probe_in_flight = True
                self._probe_since = now
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            event: BreakerEvent | None = None
            if self._current_state() is not BreakerState.CLOSED:
                event = "close"
            elif self._failures:
                event = "reset"
            self._state = BreakerState.CLOSED
            self._failures.clear()
            self._probe_in_flight = False
        self._tell(event)

    def record_failure(self) -> None:
        with self._lock:
            now = self._clock()
            state = self._current_state()
            event: BreakerEvent | None = None
            if state is BreakerState.HALF_OPEN:
                self._open(now)
                event = "open"
            else:
                self._failures.append(now)
                while self._failures and now - self._failures[0] > self.window:
                    self._failures.popleft()
                if state is BreakerState.CLOSED:
                    event = "failure"
                    if len(self._failures) >= self.threshold:
                        self._open(now)
                        event = "open"
        self._tell(event)

    def release(self) -> None:
        """A call that was let through ended without a verdict on the target's health (a client
        error, a client that left mid-stream): neither a success nor a failure, so the state stays as
        it is, but a half-open breaker lets the next request probe instead of waiting forever for this
        one. (A call let through while still closed may release a later probe early: one extra probe
        at worst, never a stuck breaker.)"""
        with self._lock:
            self._probe_in_flight = False

    def trip(self) -> None:
        """Open now (a failed health probe)."""
        with self._lock:
            opened = self._current_state() is not BreakerState.OPEN
            if opened:
                self._open(self._clock())
        self._tell("open" if opened else None)

    def open_remotely(self, seconds: float) -> None:
        """Another instance opened this target's breaker for ``seconds`` more: open here until then
        (never shorter than an opening already in force here)."""
        with self._lock:
            now = self._clock()
            seconds = min(max(0.0, seconds), self.cooldown)
            if self._current_state() is BreakerState.OPEN:
                if self.cooldown - (now - self._opened_at) >= seconds:
                    return
                self._opened_at = now - (self.cooldown - seconds)
                return
            self._open(now - (self.cooldown - seconds))

    def close_remotely(self) -> None:
        """Another instance's probe succeeded: closed here too."""
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures.clear()
            self._probe_in_flight = False

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._probe_in_flight = False
        self._failures.clear()
        self.opened_count += 1

    def seconds_until_probe(self) -> float | None:
        with self._lock:
            if self._current_state() is not BreakerState.OPEN:
                return None
            return max(0.0, self.cooldown - (self._clock() - self._opened_at))
