"""``llmhost mcp`` over stdio, started by the SDK's own client as Claude Desktop would start it; and
``pull_model``'s progress notifications on a pull from a loopback stand-in for the Hugging Face Hub."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from llmhost.config import load_settings
from llmhost.service import Service
from tests.conftest import TINY
from tests.doors.mcp.helpers import client_for, structured, text_of
from tests.hub_server import LOOPBACK_ALLOW_HOSTS, HubServer, running_hub
from tests.tiny_gguf import write_tiny_llama_gguf

REPO = "Org/Tiny-GGUF"


def _stdio_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "LLMHOST_DATA_DIR": str(data_dir),
        "LLMHOST_DEFAULT_MODEL": TINY,
        "LLMHOST_ENGINE__N_CTX": "512",
        "LLMHOST_ENGINE__N_PARALLEL": "2",
        "LLMHOST_ENGINE__N_THREADS": "1",
        "XDG_CONFIG_HOME": str(data_dir / "xdg"),
        **extra,
    }


@pytest.fixture
def data_dir(tmp_path: Path, tiny_model_path: Path) -> Path:
    data = tmp_path / "data"
    service = Service(load_settings(None, data_dir=data, default_model=TINY))
    service.store.import_file(tiny_model_path, TINY)
    service.close()
    return data


def test_llmhost_mcp_serves_the_tools_over_stdio(data_dir: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "llmhost", "mcp"], env=_stdio_env(data_dir)
    )

    async def main() -> tuple[int, dict[str, object], str]:
        async with Client(params) as client:
            tools = await client.list_tools()
            answer = await client.call_tool(
                "complete", {"prompt": "hello", "max_tokens": 3, "temperature": 0}
            )
            missing = await client.call_tool("get_model_info", {"model": "missing"})
            return len(tools.tools), structured(answer), text_of(missing)

    count, answer, missing = asyncio.run(main())
    assert count == 17
    assert answer["model"] == TINY and answer["usage"]["completion_tokens"] == 3  # type: ignore[index]
    assert "'missing' not found" in missing


def test_llmhost_mcp_runs_as_the_key_it_is_given(data_dir: Path) -> None:
    service = Service(load_settings(None, data_dir=data_dir))
    _, secret = service.keys.create("reader", scopes=["models:read"])
    service.close()
    env = _stdio_env(data_dir, LLMHOST_MCP_API_KEY=secret)
    params = StdioServerParameters(command=sys.executable, args=["-m", "llmhost", "mcp"], env=env)

    async def main() -> tuple[bool, str]:
        async with Client(params) as client:
            listed = await client.call_tool("list_models", {})
            refused = await client.call_tool("complete", {"prompt": "x", "max_tokens": 1})
            return listed.is_error, text_of(refused)

    listed_failed, refused = asyncio.run(main())
    assert not listed_failed and "lacks the 'inference' scope" in refused


def test_llmhost_mcp_with_a_wrong_key_exits_with_one_line(data_dir: Path) -> None:
    """Even where no key is needed (none exists here), a key given explicitly must be a real one."""
    env = {**os.environ, **_stdio_env(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "llmhost", "mcp", "--api-key", "llmh_wrong"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "Incorrect API key" in done.stderr


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    repos = {REPO: {"tiny-Q4_K_M.gguf": write_tiny_llama_gguf(tmp_path / "q4.gguf", seed=11)}}
    with running_hub(tmp_path / "hub", monkeypatch, repos=repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # the server under test runs in this process
        yield server


def test_pull_model_reports_progress_then_registers_the_model(hub: HubServer, make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server(pull_allow_hosts=LOOPBACK_ALLOW_HOSTS)
    url = f"{live.base_url}/mcp"
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def main() -> tuple[dict[str, object], bool, str]:
        async with client_for(url) as client:
            pulled = await client.call_tool(
                "pull_model", {"spec": f"hf:{REPO}"}, progress_callback=on_progress
            )
            models = await client.call_tool("list_models", {})
            missing = await client.call_tool("pull_model", {"spec": "hf:Org/Missing-GGUF"})
            names = [m["name"] for m in models.structured_content["models"]]  # type: ignore[index]
            return structured(pulled), "tiny-gguf:q4_k_m" in names, text_of(missing)

    pulled, listed, missing = asyncio.run(main())
    assert pulled["model"] == "tiny-gguf:q4_k_m" and str(pulled["digest"]).startswith("sha256:")
    assert listed
    assert progress, "no progress notification arrived"
    assert progress[-1][0] == progress[-1][1] == pulled["size_bytes"]
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)  # progress only grows
    assert "Org/Missing-GGUF" in missing and "not found" in missing


def test_pull_model_refuses_a_private_address(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()  # no pull_allow_hosts: API pulls reach public addresses only
    spec = "http://127.0.0.1:9/model.gguf"
    from tests.doors.mcp.helpers import call

    result = call(f"{live.base_url}/mcp", "pull_model", {"spec": spec, "sha256": "0" * 64})
    assert result.is_error and "Traceback" not in text_of(result)


def test_a_cancelled_pull_stops_before_it_registers_the_model(hub: HubServer, make_server) -> None:  # type: ignore[no-untyped-def]
    """The client cancels while the download hangs; once the hub lets go, the pull thread stops at its
    next progress event instead of resuming the download and registering the model."""
    live = make_server(pull_allow_hosts=LOOPBACK_ALLOW_HOSTS, max_concurrent_pulls=1)
    url = f"{live.base_url}/mcp"
    hub.faults.stall_after = [4096]

    async def main() -> str:
        async with client_for(url) as client:
            pull = asyncio.create_task(client.call_tool("pull_model", {"spec": f"hf:{REPO}"}))
            while not hub.stalled.is_set():
                await asyncio.sleep(0.05)
            pull.cancel()  # the SDK's client sends notifications/cancelled
            with pytest.raises(asyncio.CancelledError):
                await pull
            hub.release()  # the stalled response drops its connection: the pull would resume here
            # The one pull slot is free again once the cancelled pull has ended: until then a pull of
            # a missing repo is refused as too many pulls, after it the hub says not found.
            for _ in range(600):
                other = await client.call_tool("pull_model", {"spec": "hf:Org/Missing-GGUF"})
                if "not found" in text_of(other):
                    break
                assert "pulls are in progress" in text_of(other), text_of(other)
                await asyncio.sleep(0.05)
            models = await client.call_tool("list_models", {})
            return str(models.structured_content)

    listed = asyncio.run(main())
    assert "tiny-gguf" not in listed, listed
