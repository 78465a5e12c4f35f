"""Plain helpers every test module may import (fixtures live in ``tests/conftest.py``)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_threads(target: Callable[..., T], args: Iterable[Sequence[Any]], timeout: float = 120.0) -> list[T]:
    """Run ``target(*a)`` for each ``a`` in ``args`` on its own thread, all at once; return the results
    in order. The first exception any thread raised is re-raised here (none vanishes), and a thread still
    running after ``timeout`` seconds fails the test."""
    calls = [tuple(a) for a in args]
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = target(*calls[index])
        except BaseException as exc:
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    if stuck:
        raise AssertionError(f"threads {stuck} still running after {timeout} s")
    for error in errors:
        if error is not None:
            raise error
    return results


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` every 10 ms until it holds; fail the test if it still does not after ``timeout``
    seconds. For states that arrive on another thread's or the clock's time, instead of a sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still false after {timeout:g} s")
        time.sleep(0.01)


# Terminal settings a CLI subprocess must not inherit (they change how rich draws its output).
CLI_SCRUBBED = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def cli_env(base: Path, **extra: str) -> dict[str, str]:
    """An environment that points llmhost at ``base`` only, with small engine settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMHOST_") and k not in CLI_SCRUBBED}
    env.update(
        LLMHOST_DATA_DIR=str(base / "data"),
        XDG_CONFIG_HOME=str(base / "cfg"),
        XDG_DATA_HOME=str(base / "xdg-data"),
        LLMHOST_ENGINE__N_CTX="512",
        LLMHOST_ENGINE__N_PARALLEL="2",
        LLMHOST_ENGINE__N_BATCH="128",
        LLMHOST_ENGINE__N_THREADS="1",
        LLMHOST_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env
