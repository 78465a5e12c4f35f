"""Circuit breaker state machine, on a fake clock."""

from __future__ import annotations

from llmhost.router.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_n_failures_within_the_window() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, window=10, cooldown=5, clock=clock)
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()


def test_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=2, window=10, cooldown=5, clock=clock)
    b.record_failure()
    clock.now = 11
    b.record_failure()
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through_then_closes_on_success() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, window=10, cooldown=5, clock=clock)
    b.record_failure()
    clock.now = 4.9
    assert not b.allow()
    clock.now = 5.0
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() and not b.allow()  # exactly one probe
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow()


def test_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, window=10, cooldown=5, clock=clock)
    b.record_failure()
    clock.now = 5
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert b.seconds_until_probe() == 5
    assert b.opened_count == 2


def test_trip_opens_immediately() -> None:
    b = CircuitBreaker(failures=5, window=10, cooldown=5, clock=Clock())
    b.trip()
    assert b.state is BreakerState.OPEN


def test_a_breaker_tells_what_its_own_verdicts_changed() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=2, window=10, cooldown=5, clock=clock)
    events: list[str] = []
    b.on_change = events.append
    b.record_failure()
    b.record_success()  # clears the failure counted so far
    b.record_success()  # nothing changed
    b.record_failure()
    b.record_failure()
    b.trip()  # open already
    clock.now = 5
    assert b.allow()
    b.record_failure()  # the probe failed
    clock.now = 10
    b.record_success()
    assert events == ["failure", "reset", "failure", "open", "open", "close"]


def test_an_opening_from_another_instance_lasts_as_long_as_it_said_and_tells_nobody() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=5, window=10, cooldown=5, clock=clock)
    events: list[str] = []
    b.on_change = events.append
    b.open_remotely(2)
    assert b.state is BreakerState.OPEN and b.seconds_until_probe() == 2 and b.opened_count == 1
    b.open_remotely(1)  # never shorter than an opening in force
    assert b.seconds_until_probe() == 2
    b.open_remotely(60)  # never longer than this breaker's own cooldown
    assert b.seconds_until_probe() == 5 and b.opened_count == 1
    b.close_remotely()
    assert b.state is BreakerState.CLOSED and b.allow()
    assert events == []
