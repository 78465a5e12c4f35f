"""The decode threads' scheduling priority (``engine.nice``)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from llmhost.engine.async_engine import set_thread_nice


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux behaviour")
def test_nice_applies_to_the_calling_thread_only() -> None:
    seen: dict[str, int | bool] = {}

    def worker() -> None:
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["applied"] = set_thread_nice(base + 3)  # lowering priority needs no privilege
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - base

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"applied": True, "thread": 3}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_zero_leaves_the_priority_alone() -> None:
    assert set_thread_nice(0) is False
