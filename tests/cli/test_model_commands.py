"""``llmhost pull``, ``rm``, ``cp`` (and the ``ls``/``remove`` aliases) through typer's test runner.

The commands are registered on a fresh typer app here (``register(app)``), so most tests do not depend
on ``llmhost.cli.main`` wiring them in (the last one checks that wiring). Downloads come from the loopback
hub of ``tests.hub_server``; the "running server" that ``rm`` and ``cp`` ask about is a real llmhost on
loopback (``make_server``) over the same data dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

import llmhost.models.pull.download as pull_mod
from llmhost.cli.model_commands import register
from tests.cli.helpers import beside, one_error_line
from tests.conftest import TINY, ServerFactory
from tests.hub_server import HubServer
from tests.support import free_port, sha256_of
from tests.tiny_gguf import write_tiny_llama_gguf

REPO = "Org/Tiny-GGUF"
NAME = "tiny-gguf:q4_k_m"
REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "sk-admin-cli-5e1f"


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
    result = invoke(app, env, "pull", url, "--sha256", sha256_of(path))
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


def test_rm_refuses_a_model_loaded_in_the_running_server(
    app: typer.Typer, env: dict[str, str], make_server: ServerFactory
) -> None:
    """``rm`` asks the running server (``/api/ps``, with the CLI's key) and refuses while it has the
    model loaded; a server that refuses the CLI's key is an error, not "not loaded"; once unloaded, the
    model goes."""
    live = make_server(api_key=ADMIN_KEY)
    env = beside(live, env, LLMHOST_API_KEY=ADMIN_KEY)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert invoke(app, env, "pull", f"hf:{REPO}").exit_code == 0
    loaded = httpx.post(f"{live.base_url}/api/load", json={"model": NAME}, headers=auth, timeout=60)
    assert loaded.status_code == 200, loaded.text

    line = one_error_line(invoke(app, env, "rm", NAME))
    assert f"model {NAME} is in use by the running server; unload it first (POST /api/unload)" in line
    line = one_error_line(invoke(app, {**env, "LLMHOST_API_KEY": "sk-not-the-key-77"}, "rm", NAME))
    assert f"the server on port {live.port} refused the CLI (401)" in line
    assert set(listed(app, env)) == {TINY, NAME}

    unloaded = httpx.post(f"{live.base_url}/api/unload", json={"model": NAME}, headers=auth, timeout=60)
    assert unloaded.json() == {"status": "unloaded", "model": NAME}
    result = invoke(app, env, "remove", NAME)
    assert result.exit_code == 0, result.stderr
    assert set(listed(app, env)) == {TINY}


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
    app: typer.Typer, env: dict[str, str], hub: HubServer, make_server: ServerFactory
) -> None:
    """Re-pointing a name the running server has loaded keeps its old file (the server still runs it).
    The server needs a key the CLI is not given: the CLI gets in with the owner token the server wrote
    into the data dir."""
    live = make_server(api_key=ADMIN_KEY)
    env = beside(live, env)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert invoke(app, env, "pull", f"hf:{REPO}").exit_code == 0
    assert invoke(app, env, "pull", f"hf:{REPO}:Q8_0", "--name", "current").exit_code == 0
    q8 = hub.repos[REPO].files["tiny-Q8_0.gguf"].sha256
    blobs = Path(env["LLMHOST_DATA_DIR"]) / "models" / "blobs"
    loaded = httpx.post(f"{live.base_url}/api/load", json={"model": "current"}, headers=auth, timeout=60)
    assert loaded.status_code == 200 and loaded.json()["digest"] == q8, loaded.text

    result = invoke(app, env, "cp", NAME, "current")
    assert result.exit_code == 0, result.stderr
    models = listed(app, env)
    assert models["current"] == models[NAME]
    assert (blobs / f"sha256-{q8}").is_file()  # no name uses it, but the server still runs it
    ps = httpx.get(f"{live.base_url}/api/ps", headers=auth).json()["models"]
    assert {m["name"]: m["digest"] for m in ps}["current"] == q8


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
    """``llmhost.cli.main`` registers these commands: ``--help`` lists them and ``pull`` runs."""
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LLMHOST_", "HF_"))}, **env}
    full_env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    help_text = subprocess.run(
        [sys.executable, "-m", "llmhost", "--help"],
        env=full_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    words = set(help_text.replace("│", " ").split())
    assert {"pull", "rm", "cp"} <= words, help_text
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
