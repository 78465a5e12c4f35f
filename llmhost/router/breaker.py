"""Circuit breakers: stop sending traffic to a target that keeps failing, then probe it.

closed --(``failures`` within ``window`` s)--> open --(``cooldown`` s)--> half-open
half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker"]


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
        self._lock = threading.Lock()
        self.opened_count = 0

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
        """May a request go to this target now? In half-open, exactly one probe is let through."""
        with self._lock:
            state = self._current_state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures.clear()
            self._probe_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            now = self._clock()
            state = self._current_state()
            if state is BreakerState.HALF_OPEN:
                self._open(now)
                return
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.window:
                self._failures.popleft()
            if state is BreakerState.CLOSED and len(self._failures) >= self.threshold:
                self._open(now)

    def trip(self) -> None:
        """Open now (a failed health probe)."""
        with self._lock:
            if self._current_state() is not BreakerState.OPEN:
                self._open(self._clock())

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
