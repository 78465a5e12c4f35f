"""``/api/pull`` driven by the official ``ollama`` client, from a loopback stand-in for the Hugging Face
Hub: progress lines Ollama's client parses, ``success`` last, and the model listed afterwards. The server
allows the loopback hub in ``pull_allow_hosts`` (API pulls reach public addresses only by default).

``name`` is Ollama's older spelling of ``model`` (its Go CLI's ``ollama pull`` still sends it); the name
to register the model under is llmhost's ``register_as``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from llmhost.config import Settings
from tests.conftest import LiveServer, make_settings
from tests.hub_server import LOOPBACK_ALLOW_HOSTS, HubServer, running_hub
from tests.tiny_gguf import write_tiny_llama_gguf

REPO = "Org/Tiny-GGUF"
PULLED = "tiny-gguf:q4_k_m"  # the default name: <repo>:<quant>


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", pull_allow_hosts=LOOPBACK_ALLOW_HOSTS)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    repos = {REPO: {"tiny-Q4_K_M.gguf": write_tiny_llama_gguf(tmp_path / "q4.gguf", seed=11)}}
    with running_hub(tmp_path / "hub", monkeypatch, repos=repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # the server under test runs in this process
        yield server


@pytest.fixture
def client(server: LiveServer) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=60)


def test_a_streamed_pull_reports_progress_then_success(hub: HubServer, client: ollama.Client) -> None:
    events = list(client.pull(f"hf:{REPO}", stream=True))
    statuses = [e.status for e in events]
    assert statuses[0] == "resolving" and statuses[-1] == "success"
    downloading = [e for e in events if e.status == "downloading"]
    assert downloading and downloading[-1].completed == downloading[-1].total
    assert downloading[-1].digest and downloading[-1].digest.startswith("sha256:")
    assert PULLED in {m.model for m in client.list().models}
    assert client.generate(model=PULLED, prompt="hi", options={"num_predict": 1}).done


def test_a_whole_pull_answers_its_last_status(hub: HubServer, client: ollama.Client) -> None:
    assert client.pull(f"hf:{REPO}").status == "success"
    assert client.pull(f"hf:{REPO}").status == "success"  # already there: verified, not downloaded again


def test_a_pull_of_an_unknown_repo_fails_with_an_error(hub: HubServer, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        list(client.pull("hf:Org/Missing-GGUF", stream=True))
    assert "Org/Missing-GGUF" in err.value.error and "not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("hf:Org/Missing-GGUF")
    assert "not found" in err.value.error


def test_a_pull_by_name_as_ollamas_go_cli_sends_it(hub: HubServer, server: LiveServer) -> None:
    r = httpx.post(f"{server.base_url}/api/pull", json={"name": f"hf:{REPO}", "stream": False}, timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    client = ollama.Client(host=server.base_url)
    assert PULLED in {m.model for m in client.list().models}
    same = {"model": f"hf:{REPO}", "name": f"hf:{REPO}", "stream": False}
    assert httpx.post(f"{server.base_url}/api/pull", json=same, timeout=60).json()["status"] == "success"


def test_register_as_names_the_pulled_model(hub: HubServer, server: LiveServer) -> None:
    body = {"model": f"hf:{REPO}", "register_as": "mine", "stream": False}
    r = httpx.post(f"{server.base_url}/api/pull", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    names = {m.model for m in ollama.Client(host=server.base_url).list().models}
    assert "mine" in names and PULLED not in names


def test_a_name_that_is_not_the_model_is_400_pointing_at_register_as(
    hub: HubServer, server: LiveServer
) -> None:
    # An older llmhost client sent `name` as the name to register under; Ollama would drop it silently.
    body = {"model": f"hf:{REPO}", "name": "mine", "stream": False}
    r = httpx.post(f"{server.base_url}/api/pull", json=body, timeout=60)
    assert r.status_code == 400 and "register_as" in r.json()["error"]
    r = httpx.post(f"{server.base_url}/api/pull", json={"stream": False}, timeout=60)
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
