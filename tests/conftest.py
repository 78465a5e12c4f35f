"""Shared fixtures: a tiny real GGUF model, settings in a temp dir, a service, a live HTTP server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from llmhost.config import Settings, load_settings
from llmhost.service import Service
from tests.tiny_gguf import write_tiny_llama_gguf

TINY = "tiny"


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
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

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
