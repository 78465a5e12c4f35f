"""``llmhost agents create | list | show | runs | scorecard | rm`` through typer's test runner, on a data
dir with the tiny model, beside a live server over the same dir (which sees the CLI's agents at once)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from llmhost.cli.agent_commands import register
from tests.cli.helpers import beside, one_error_line
from tests.conftest import TINY, LiveServer


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(cli)
    return cli


def _run(app: typer.Typer, env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, ["agents", *args], env=env, catch_exceptions=False)


def test_create_use_and_score_an_agent(app: typer.Typer, server: LiveServer, tmp_path: Path) -> None:
    env = beside(server, {})
    made = _run(app, env, "create", "support", "--model", TINY, "--system", "Be brief.")
    assert made.exit_code == 0, made.stderr
    assert "created agent support" in made.stdout
    listed = _run(app, env, "list")
    assert "support" in listed.stdout and TINY in listed.stdout
    shown = json.loads(_run(app, env, "show", "support").stdout)
    assert shown["system"] == "Be brief." and shown["model"] == TINY
    # The running server answers as the agent the CLI made.
    body = {"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    httpx.get(f"{server.base_url}/v1/agents/support/runs").raise_for_status()  # the server's writer flushed
    runs = [json.loads(line) for line in _run(app, env, "runs", "support", "--json").stdout.splitlines()]
    assert [x["id"] for x in runs] == [r.headers["x-llmhost-run-id"]]
    assert _run(app, env, "runs", "support").exit_code == 0  # the table
    card = json.loads(_run(app, env, "scorecard", "support", "--json").stdout)
    assert card["requests"] == 1 and card["success_rate"] == 1.0
    text = _run(app, env, "scorecard", "support").stdout
    assert "1 requests" in text and "success 100.0%" in text
    assert json.loads(_run(app, env, "scorecard", "--model", TINY, "--json").stdout)["requests"] == 1
    spec = tmp_path / "agent.json"
    spec.write_text(json.dumps({"model": TINY, "sampling": {"temperature": 0.2}, "max_steps": 2}))
    assert _run(app, env, "create", "filed", "--file", str(spec)).exit_code == 0
    assert json.loads(_run(app, env, "show", "filed").stdout)["max_steps"] == 2
    assert _run(app, env, "rm", "support").exit_code == 0
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60).status_code == 404


def test_bad_input_is_one_error_line(app: typer.Typer, server: LiveServer, tmp_path: Path) -> None:
    env = beside(server, {})
    assert "does not exist" in one_error_line(_run(app, env, "create", "a", "--model", "nope"))
    assert "needs a model" in one_error_line(_run(app, env, "create", "a"))
    assert "name" in one_error_line(_run(app, env, "create", "bad name", "--model", TINY))
    assert "unknown tool group" in one_error_line(
        _run(app, env, "create", "a", "--model", TINY, "--tool-group", "x")
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert "cannot read" in one_error_line(_run(app, env, "create", "a", "--file", str(broken)))
    assert "no agent" in one_error_line(_run(app, env, "show", "ghost"))
    assert "no agent" in one_error_line(_run(app, env, "rm", "ghost"))
    assert "no agent" in one_error_line(_run(app, env, "scorecard", "ghost"))
    assert "give an agent" in one_error_line(_run(app, env, "scorecard"))
    assert _run(app, env, "create", "a", "--model", TINY).exit_code == 0
    assert "already exists" in one_error_line(_run(app, env, "create", "a", "--model", TINY))
