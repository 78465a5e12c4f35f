"""``llmhost ps``, ``usage`` and ``bench`` against a real llmhost on loopback (``make_server``), through the
real ``llmhost.cli.main`` app in typer's test runner: what each prints, its exit code, and one line of
error (non-zero exit) for bad input."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner, Result

from llmhost.cli.common import human_size
from llmhost.cli.main import app
from tests.cli.helpers import beside, one_error_line
from tests.conftest import TINY, ServerFactory
from tests.providers.fault_server import closed_port
from tests.support import free_port

KEY = "sk-server-commands-0c4d"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A CLI environment of its own (no server's data dir, a port where nothing answers)."""
    return {
        "LLMHOST_DATA_DIR": str(tmp_path / "cli-data"),
        "LLMHOST_HOST": "127.0.0.1",
        "LLMHOST_PORT": str(free_port()),
        "COLUMNS": "200",
    }


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def table(result: Result) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a table the command printed (columns split on runs of 2+ spaces)."""
    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in lines)
    return header, rows


# ----- ps ---------------------------------------------------------------------------------------------
def test_ps_lists_what_the_running_server_has_loaded(make_server: ServerFactory, env: dict[str, str]) -> None:
    """One row per loaded model, as the server's ``/api/ps`` says; the CLI gets in with the owner token
    the server wrote into its data dir (the server has a key the CLI is not given); none after unloading."""
    live = make_server(api_key=KEY)
    env = beside(live, env)
    result = invoke(env, "ps")
    (entry,) = httpx.get(f"{live.base_url}/api/ps", headers=AUTH).json()["models"]
    header, rows = table(result)
    assert header == ["NAME", "ID", "SIZE", "PROCESSOR", "SLOTS", "CONTEXT", "IDLE", "UNTIL"]
    assert len(rows) == 1, rows
    name, short_id, size, processor, slots, context, idle, until = rows[0]
    assert (name, short_id, size) == (
        TINY,
        entry["digest"].removeprefix("sha256:")[:12],
        human_size(entry["size"]),
    )
    assert processor == ("GPU" if entry["size_vram"] else "CPU")
    assert (slots, context) == ("0/4 (+0 waiting)", "512")
    assert re.fullmatch(r"\d+s", idle) and re.fullmatch(r"\d\d:\d\d:\d\d", until), rows[0]

    unloaded = httpx.post(f"{live.base_url}/api/unload", json={"model": TINY}, headers=AUTH, timeout=30)
    assert unloaded.json() == {"status": "unloaded", "model": TINY}
    header, rows = table(invoke(env, "ps"))
    assert rows == []


def test_ps_without_a_server_or_a_way_in_is_one_error_line(
    make_server: ServerFactory, env: dict[str, str]
) -> None:
    """No server on the port: one line saying so. A server that refuses the CLI (a key it lacks, and no
    owner token in its own data dir): one line with the status."""
    port = env["LLMHOST_PORT"]
    line = one_error_line(invoke(env, "ps"))
    assert line == (
        f"error: no llmhost server answers at http://127.0.0.1:{port} (start one with `llmhost serve`)"
    )
    live = make_server(api_key=KEY)
    line = one_error_line(invoke({**env, "LLMHOST_PORT": str(live.port)}, "ps"))
    assert line.startswith("error: server answered 401: "), line


# ----- usage ------------------------------------------------------------------------------------------
def test_usage_summarises_the_servers_requests_by_model_and_door(
    make_server: ServerFactory, env: dict[str, str], openai_client: Callable[..., Any]
) -> None:
    """Requests through two doors, one of them to a route whose upstream is down, then ``usage`` over the
    server's data dir: the counts, successes and token sums the answers reported, grouped as asked;
    ``--days 0`` leaves out what came before now."""
    dead = {"type": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1", "health_interval": 0}
    live = make_server(
        providers={"dead": dead},
        routes={"dead": {"targets": [{"provider": "dead", "model": "m"}], "retries": 0}},
    )
    client = openai_client(live)
    chat: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "temperature": 0,
    }
    answers = [client.chat.completions.create(model=TINY, **chat) for _ in range(2)]
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="dead", **chat)
    assert refused.value.status_code == 502
    ollama = httpx.post(
        f"{live.base_url}/api/generate",
        json={"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        timeout=30,
    ).json()
    live.service.usage.flush(timeout=30)
    env = beside(live, env)
    prompt = sum(a.usage.prompt_tokens for a in answers) + ollama["prompt_eval_count"]
    completion = sum(a.usage.completion_tokens for a in answers) + ollama["eval_count"]

    header, rows = table(invoke(env, "usage"))
    assert header == ["MODEL", "REQUESTS", "OK", "PROMPT", "COMPLETION", "CACHED", "COST", "AVG MS"]
    assert [row[0] for row in rows] == ["dead", TINY]
    assert rows[0][1:3] == ["1", "0"]
    assert rows[1][:5] == [TINY, "3", "3", str(prompt), str(completion)]
    assert rows[1][6] == "0.000000"  # the local model has no price

    header, rows = table(invoke(env, "usage", "--by", "door", "--days", "1"))
    assert header[0] == "DOOR"
    assert {row[0]: row[1:3] for row in rows} == {"ollama": ["1", "1"], "openai": ["3", "2"]}
    assert table(invoke(env, "usage", "--days", "0"))[1] == []


def test_usage_by_an_unknown_grouping_is_one_error_line(env: dict[str, str]) -> None:
    line = one_error_line(invoke(env, "usage", "--by", "planet"), code=2)
    assert line == "error: --by must be one of model, provider, target, key, door, day"


@pytest.mark.parametrize("days", ["nan", "1e10", "-1"])
def test_usage_with_days_out_of_range_is_one_error_line(env: dict[str, str], days: str) -> None:
    line = one_error_line(invoke(env, "usage", "--days", days), code=2)
    assert "--days" in line


# ----- bench ------------------------------------------------------------------------------------------
def bench_row(result: Result) -> list[str]:
    """The cells of the one result row under ``bench``'s Markdown header."""
    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 3 and lines[0].startswith("| scenario | server | ok | errors |"), lines
    return [cell.strip() for cell in lines[2].strip("|").split("|")]


def test_bench_drives_the_server_and_reports_one_row(make_server: ServerFactory, env: dict[str, str]) -> None:
    """Four streamed requests, two at a time: four answered in full (``ignore_eos``: every one is
    ``--max-tokens`` long), and the server counted those four requests and their tokens."""
    live = make_server()
    args = ("--model", TINY, "--concurrency", "2", "--requests", "4", "--max-tokens", "3")
    row = bench_row(invoke(env, "bench", "--url", live.base_url, *args, "--prompt-tokens", "8"))
    scenario, server, ok, errors, too_many, truncated = row[:6]
    assert (scenario, server) == ("c=2 n=4", live.base_url)
    assert (ok, errors, too_many, truncated) == ("4", "0", "0", "0")
    assert row[10] == "3.0"  # tokens per request
    assert float(row[9]) > 0  # aggregate tok/s
    live.service.usage.flush(timeout=30)
    (usage,) = httpx.get(f"{live.base_url}/api/usage", params={"by": "model"}).json()["rows"]
    assert (usage["model"], usage["requests"], usage["ok"], usage["completion_tokens"]) == (TINY, 4, 4, 12)


def test_bench_with_a_bad_endpoint_is_one_error_line(env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # refused before any request: nothing needs to answer
    line = one_error_line(invoke(env, "bench", "--url", url, "--endpoint", "embeddings"), code=2)
    assert line == "error: --endpoint must be 'completions' or 'chat'"


def test_bench_where_no_request_succeeds_exits_1(make_server: ServerFactory, env: dict[str, str]) -> None:
    """A model the server does not have: every request fails; the row says so, stderr samples the
    error, and the last line is the one error."""
    live = make_server()
    args = ("--url", live.base_url, "--model", "missing", "--requests", "2", "--concurrency", "1")
    result = invoke(env, "bench", *args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"error: no request succeeded against {live.base_url}"
    assert len(lines) == 2 and lines[0].startswith("error sample: 404: "), lines
    assert "missing" in lines[0]
