"""A real PostgreSQL 15 server for the tests, started on a free loopback port (trust auth, socket in its
own temp dir, fsync off), and a fresh database per test on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.support import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "pg-s3cret-never-shown"  # trust auth accepts it; it must never come back to a caller


def pg_ctl(tool: str, *args: str) -> None:
    """Run a PostgreSQL program, as the `postgres` user when we are root (PostgreSQL refuses root)."""
    cmd = [str(PG_BIN / tool), *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


@dataclass
class PostgresServer:
    base: Path
    port: int

    @property
    def url(self) -> str:
        """The maintenance database (``postgres``)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def stop(self) -> None:
        data = self.base / "data"
        if (data / "postmaster.pid").exists():
            pg_ctl("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """A new cluster, started; skips the test when PostgreSQL 15 is not installed."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    base = Path(tempfile.mkdtemp(prefix="llmhost-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    server = PostgresServer(base, port)
    try:
        initdb = ("-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
        pg_ctl("initdb", *initdb)
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        pg_ctl("pg_ctl", "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "-t", "30", "start")
    except BaseException:
        server.stop()
        raise
    return server
