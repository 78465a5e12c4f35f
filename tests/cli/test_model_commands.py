"""``llmhost pull``, ``rm``, ``cp`` (and the ``ls``/``remove`` aliases) through typer's test runner.

The commands are registered on a fresh typer app here (``register(app)``), so these tests do not depend
on ``llmhost.cli.main`` wiring them in. Downloads come from the loopback hub of ``tests.hub_server``; the
"running server" that ``rm`` asks about is a tiny fake ``/api/ps`` endpoint.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

import llmhost.models.pull.download as pull_mod
from llmhost.cli.model_commands import register
from tests.hub_server import HubServer
from tests.tiny_gguf import write_tiny_llama_gguf

REPO = "Org/Tiny-GGUF"
NAME = "tiny-gguf:q4_k_m"
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeServer:
    """Answers ``GET /api/ps`` with ``models`` (what a running llmhost reports as loaded)."""

    def __init__(self) -> None:
        self.models: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.auth.append(self.headers.get("Authorization"))
                body = json.dumps({"models": outer.models}).encode()
                self.send_response(200 if self.path == "/api/ps" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(cli)
    return cli


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer(tmp_path / "hub")
    server.add_repo(
        REPO,
        {
            "tiny-Q4_K_M.gguf": write_tiny_llama_gguf(tmp_path / "q4.gguf", seed=1),
            "tiny-Q8_0.gguf": write_tiny_llama_gguf(tmp_path / "q8.gguf", seed=2),
        },
    )
    with server:
        yield server


@pytest.fixture
def env(tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "LLMHOST_HOST", "LLMHOST_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pull_mod, "_RETRY_BACKOFF_S", 0.0)
    return {
        "LLMHOST_DATA_DIR": str(tmp_path / "data"),
        "LLMHOST_PORT": str(free_port()),  # no server answers there
        "HF_ENDPOINT": hub.url,
        "COLUMNS": "200",
    }


def invoke(app: typer.Typer, env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def listed(app: typer.Typer, env: dict[str, str]) -> dict[str, str]:
    """name -> short id, from the ``ls`` alias of ``list``."""
    result = invoke(app, env, "ls")
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    return {row[0]: row[1] for row in rows}


# ----- pull -------------------------------------------------------------------------------------------
def test_pull_registers_the_model(app: typer.Typer, env: dict[str, str], hub: HubServer) -> None:
    result = invoke(app, env, "pull", f"hf:{REPO}")
    assert result.exit_code == 0, result.stderr
    digest = hub.repos[REPO].files["tiny-Q4_K_M.gguf"].sha256
    assert f"pulled {NAME}" in result.stdout
    assert f"sha256:{digest}" in "".join(result.stdout.split())
    assert listed(app, env) == {NAME: digest[:12]}


def test_pull_with_name_and_quant(app: typer.Typer, env: dict[str, str]) -> None:
    result = invoke(app, env, "pull", f"hf:{REPO}:q8_0", "--name", "mine:q8")
    assert result.exit_code == 0, result.stderr
    assert set(listed(app, env)) == {"mine:q8"}


def test_pull_wrong_sha256_is_one_error_line(app: typer.Typer, env: dict[str, str]) -> None:
    line = one_error_line(invoke(app, env, "pull", f"hf:{REPO}", "--sha256", "0" * 64))
    assert "does not match the hub" in line
    assert listed(app, env) == {}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("Org/Repo", "invalid pull spec"),
        ("hf:Org/Missing", "not found"),
        ("http://example.com/m.gguf", "loopback"),
        ("https://127.0.0.1:1/m.gguf", "--sha256"),
    ],
)
def test_pull_failures_are_one_error_line(
    app: typer.Typer, env: dict[str, str], spec: str, needle: str
) -> None:
    assert needle in one_error_line(invoke(app, env, "pull", spec))


def test_pull_plain_url(app: typer.Typer, env: dict[str, str], hub: HubServer, tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(tmp_path / "u.gguf", seed=9)
    url = hub.add_plain("u-Q4_0.gguf", path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    result = invoke(app, env, "pull", url, "--sha256", sha)
    assert result.exit_code == 0, result.stderr
    assert set(listed(app, env)) == {"u:q4_0"}


# ----- rm ---------------------------------------------------------------------------------------------
def test_rm_without_a_running_server(app: typer.Typer, env: dict[str, str]) -> None:
    assert invoke(app, env, "pull", f"hf:{REPO}").exit_code == 0
    result = invoke(app, env, "rm", NAME)
    assert result.exit_code == 0, result.stderr
    assert f"deleted {NAME}" in result.stdout
    assert listed(app, env) == {}
    assert list((Path(env["LLMHOST_DATA_DIR"]) / "models" / "blobs").iterdir()) == []
    assert "not found" in one_error_line(invoke(app, env, "rm", NAME))


def test_rm_refuses_a_model_loaded_in_the_running_server(app: typer.Typer, env: dict[str, str]) -> None:
    assert invoke(app, env, "pull", f"hf:{REPO}").exit_code == 0
    server = FakeServer()
    try:
        env = {**env, "LLMHOST_PORT": str(server.port), "LLMHOST_API_KEY": "sk-admin"}
        server.models = [{"name": NAME, "model": NAME}]
        line = one_error_line(invoke(app, env, "rm", NAME))
        assert f"model {NAME} is in use by the running server; unload it first (POST /api/unload)" in line
        assert NAME in listed(app, env)
        assert server.auth == ["Bearer sk-admin"]

        server.models = [{"name": "other", "model": "other"}]  # unloaded now
        result = invoke(app, env, "remove", NAME)
        assert result.exit_code == 0, result.stderr
        assert listed(app, env) == {}
    finally:
        server.stop()


# ----- cp ---------------------------------------------------------------------------------------------
def test_cp_adds_a_name_for_the_same_blob(app: typer.Typer, env: dict[str, str]) -> None:
    assert invoke(app, env, "pull", f"hf:{REPO}").exit_code == 0
    result = invoke(app, env, "cp", NAME, "org/alias:latest")
    assert result.exit_code == 0, result.stderr
    assert f"copied {NAME} to org/alias:latest" in result.stdout
    models = listed(app, env)
    assert set(models) == {NAME, "org/alias:latest"}
    assert models[NAME] == models["org/alias:latest"]
    blobs = Path(env["LLMHOST_DATA_DIR"]) / "models" / "blobs"
    assert len(list(blobs.iterdir())) == 1

    assert invoke(app, env, "rm", NAME).exit_code == 0  # the other name keeps the blob
    assert set(listed(app, env)) == {"org/alias:latest"}
    assert len(list(blobs.iterdir())) == 1


def test_cp_onto_an_existing_name_re_points_it(app: typer.Typer, env: dict[str, str]) -> None:
    assert invoke(app, env, "pull", f"hf:{REPO}").exit_code == 0
    assert invoke(app, env, "pull", f"hf:{REPO}:Q8_0", "--name", "current").exit_code == 0
    blobs = Path(env["LLMHOST_DATA_DIR"]) / "models" / "blobs"
    assert len(list(blobs.iterdir())) == 2
    result = invoke(app, env, "cp", NAME, "current")
    assert result.exit_code == 0, result.stderr
    models = listed(app, env)
    assert models["current"] == models[NAME]
    assert len(list(blobs.iterdir())) == 1  # the Q8_0 file lost its last name: deleted


def test_cp_keeps_the_old_file_while_the_running_server_has_it_loaded(
    app: typer.Typer, env: dict[str, str], hub: HubServer
) -> None:
    assert invoke(app, env, "pull", f"hf:{REPO}").exit_code == 0
    assert invoke(app, env, "pull", f"hf:{REPO}:Q8_0", "--name", "current").exit_code == 0
    q8 = hub.repos[REPO].files["tiny-Q8_0.gguf"].sha256
    blobs = Path(env["LLMHOST_DATA_DIR"]) / "models" / "blobs"
    server = FakeServer()
    try:
        server.models = [{"name": "current", "model": "current", "digest": f"sha256:{q8}"}]
        result = invoke(app, {**env, "LLMHOST_PORT": str(server.port)}, "cp", NAME, "current")
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    models = listed(app, env)
    assert models["current"] == models[NAME]
    assert (blobs / f"sha256-{q8}").is_file()  # no name uses it, but the server still runs it


def test_cp_errors(app: typer.Typer, env: dict[str, str]) -> None:
    assert invoke(app, env, "pull", f"hf:{REPO}").exit_code == 0
    assert "invalid model name" in one_error_line(invoke(app, env, "cp", NAME, "../evil"))
    assert "not found" in one_error_line(invoke(app, env, "cp", "missing", "x"))
    assert "not found" in one_error_line(invoke(app, env, "cp", "missing", NAME))
    assert set(listed(app, env)) == {NAME}
    blobs = Path(env["LLMHOST_DATA_DIR"]) / "models" / "blobs"
    assert len(list(blobs.iterdir())) == 1


# ----- the real entry point, once llmhost.cli.main registers these commands ---------------------------
def test_python_m_llmhost_pull(env: dict[str, str], tmp_path: Path) -> None:
    import os

    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LLMHOST_", "HF_"))}, **env}
    full_env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    help_text = subprocess.run(
        [sys.executable, "-m", "llmhost", "--help"],
        env=full_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout
    if " pull " not in help_text:
        pytest.skip("llmhost.cli.main does not register model_commands yet")
    result = subprocess.run(
        [sys.executable, "-m", "llmhost", "pull", f"hf:{REPO}"],
        env=full_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"pulled {NAME}" in result.stdout
