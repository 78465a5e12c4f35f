"""A real ``redis-server`` for the tests, on a free loopback port (no persistence), and a fresh, empty
database of it per test (channels are not per database: users of pub/sub name theirs by database)."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.support import free_port

DATABASES = 64


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int
    work: Path
    _next: itertools.count[int] = field(default_factory=lambda: itertools.count())

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """The URL of a database no other test of this session uses now, emptied."""
        url = self.url(next(self._next) % DATABASES)
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.work, ignore_errors=True)


def start_redis() -> RedisServer:
    """A new redis-server, started; skips the test when it is not installed (installed with apt-get
    when missing and running as root, as the Makefile's ``services`` does)."""
    binary = shutil.which("redis-server")
    if binary is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=False, capture_output=True)
        binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port, work = free_port(), Path(tempfile.mkdtemp(prefix="llmhost-redis-"))
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--databases", str(DATABASES), "--dir", str(work)]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    server = RedisServer(proc, port, work)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                server.stop()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)
