"""Helpers the router tests share (a candidate for ``tests/support.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` every 10 ms until it holds; fail the test if it still does not after ``timeout``
    seconds. For states that arrive on another thread's or the clock's time, instead of a sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still false after {timeout:g} s")
        time.sleep(0.01)
