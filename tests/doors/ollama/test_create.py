"""``/api/create`` with the official ``ollama`` client over loopback: a model made ``FROM`` another with
its own system prompt and parameters (an agent inside llmhost), shown, used, copied, replaced, deleted;
and what it cannot make is a 400 naming the field."""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.conftest import TINY, LiveServer, ServerFactory
from tests.support import wait_until

HI: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def client(server: LiveServer) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=60)


def system_of(client: ollama.Client, name: str) -> str:
    """``/api/show``'s ``system`` (Ollama sends it; ollama-python's ShowResponse has no field for it)."""
    body: dict[str, Any] = client._client.post("/api/show", json={"model": name}).json()
    return str(body.get("system", ""))


def test_a_model_made_from_another_has_its_system_prompt_and_parameters(client: ollama.Client) -> None:
    statuses = list(
        client.create(
            model="mario",
            from_=TINY,
            system="You are Mario.",
            parameters={"num_predict": 3, "temperature": 0, "stop": ["zz"], "num_ctx": 2048},
            license="MIT",
            stream=True,
        )
    )
    assert statuses[-1].status == "success" and all(s.status for s in statuses)
    assert "mario" in [m.model for m in client.list().models]

    shown = client.show("mario")
    assert shown.modelfile is not None and shown.modelfile.startswith(f"FROM {TINY}\n")
    assert 'SYSTEM """You are Mario."""' in shown.modelfile
    assert "PARAMETER num_predict 3" in shown.modelfile and 'PARAMETER stop "zz"' in shown.modelfile
    assert system_of(client, "mario") == "You are Mario." and shown.license == "MIT"
    assert shown.details is not None and shown.details.parent_model == TINY
    assert shown.details.format == "gguf"
    assert shown.parameters is not None and "num_predict" in shown.parameters

    # Its parameters are the defaults of every request to it; its system prompt goes in front.
    made = client.chat(model="mario", messages=HI)
    plain = client.chat(model=TINY, messages=HI, options={"num_predict": 3})
    assert made.eval_count == 3 and made.done_reason == "length"
    assert made.prompt_eval_count and plain.prompt_eval_count
    assert made.prompt_eval_count > plain.prompt_eval_count
    assert client.chat(model="mario", messages=HI, options={"num_predict": 5}).eval_count == 5  # caller wins
    assert client.generate(model="mario:latest", prompt="hi").eval_count == 3


def test_creating_again_replaces_and_a_model_from_a_made_one_inherits_it(client: ollama.Client) -> None:
    client.create(model="mario", from_=TINY, system="first", parameters={"num_predict": 3})
    assert client.create(model="mario", from_=TINY, system="second").status == "success"
    assert system_of(client, "mario") == "second"
    assert client.show("mario").modelfile == f'FROM {TINY}\nSYSTEM """second"""\n'  # a fresh start

    client.create(model="mario", from_=TINY, system="base", parameters={"num_predict": 3})
    assert client.create(model="unbounded", from_="mario", parameters={"num_predict": -1}).status == "success"
    assert "num_predict" not in (client.show("unbounded").parameters or "")  # Ollama's "no limit"
    client.create(model="luigi", from_="mario", parameters={"temperature": 0.5})
    luigi = client.show("luigi")
    assert system_of(client, "luigi") == "base"
    assert luigi.details is not None and luigi.details.parent_model == TINY
    assert "num_predict" in (luigi.parameters or "") and "temperature" in (luigi.parameters or "")
    answer = client.chat(model="luigi", messages=HI)  # sampled: it may end on its own before the cap
    assert answer.eval_count is not None and answer.eval_count <= 3
    assert answer.done_reason == "stop" or answer.eval_count == 3


def test_a_made_model_copies_and_deletes_like_any_other(client: ollama.Client) -> None:
    client.create(
        model="mario", from_=TINY, system="It's me.", parameters={"num_predict": 2, "temperature": 0}
    )
    client.copy("mario", "mario2")
    assert system_of(client, "mario2") == "It's me."
    client.delete("mario")
    names = [m.model for m in client.list().models]
    assert "mario" not in names and "mario2" in names
    with pytest.raises(ollama.ResponseError) as err:
        client.show("mario")
    assert err.value.status_code == 404
    assert client.chat(model="mario2", messages=HI).eval_count == 2
    assert TINY in names  # the model it was made from is untouched


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "m"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "m", "from": "nope"}, 404, "nope"),
        ({"from": TINY}, 400, "model is required"),
        ({"model": "m", "files": {"a.gguf": "sha256:" + "0" * 64}}, 400, "push it first"),
        ({"model": "m", "from": TINY, "template": "{{ .Prompt }}"}, 400, "template"),
        ({"model": "m", "from": TINY, "adapters": {"a": "sha256:" + "0" * 64}}, 400, "adapters"),
        ({"model": "m", "from": TINY, "quantize": "q4_K_M"}, 400, "quantiz"),
        ({"model": "m", "from": TINY, "messages": [{"role": "user", "content": "x"}]}, 400, "messages"),
        ({"model": "m", "from": TINY, "parameters": {"bogus": 1}}, 400, "unknown parameter 'bogus'"),
        ({"model": "m", "from": TINY, "parameters": {"temperature": 9}}, 400, "temperature"),
        ({"model": "m", "from": TINY, "parameters": {"stop": 3}}, 400, "stop"),
        ({"model": "m", "from": TINY, "license": 3}, 400, "license"),
        ({"model": "bad name!", "from": TINY}, 400, "model"),
        ({"model": TINY, "from": TINY, "system": "x"}, 409, "stored model"),
    ],
)
def test_what_create_cannot_make_is_a_clear_error(
    server: LiveServer, body: dict[str, Any], status: int, words: str
) -> None:
    resp = httpx.post(f"{server.base_url}/api/create", json={**body, "stream": False}, timeout=30)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error"} and words in resp.json()["error"]
    names = [m["name"] for m in httpx.get(f"{server.base_url}/api/tags").json()["models"]]
    assert names == [TINY]  # nothing was made


def test_create_needs_models_write_and_agents_write(make_server: ServerFactory) -> None:
    live = make_server()
    keys = live.service.keys
    _, models_only = keys.create("models-only", scopes=["models:write", "inference"])
    _, both = keys.create("both", scopes=["models:write", "agents:write", "models:read"])
    body = {"model": "m", "from": TINY, "stream": False}
    url = f"{live.base_url}/api/create"
    refused = httpx.post(url, json=body, headers={"Authorization": f"Bearer {models_only}"})
    assert refused.status_code == 403 and "agents:write" in refused.json()["error"]
    made = httpx.post(url, json=body, headers={"Authorization": f"Bearer {both}"})
    assert made.status_code == 200 and made.json() == {"status": "success"}
    gone = httpx.request(
        "DELETE",
        f"{live.base_url}/api/delete",
        json={"model": "m"},
        headers={"Authorization": f"Bearer {both}"},
    )
    assert gone.status_code == 200


# ----- a model from a pushed GGUF: /api/blobs, then files -----------------------------------------------
def test_a_pushed_gguf_becomes_a_stored_model(make_server: ServerFactory, tiny_model_path: Path) -> None:
    # The body limit is far below the file's size: a pushed file is streamed to disk, not read whole.
    live = make_server(max_request_bytes=4096)
    client = ollama.Client(host=live.base_url, timeout=60)
    digest = client.create_blob(tiny_model_path)
    assert httpx.head(f"{live.base_url}/api/blobs/{digest}").status_code == 200
    again = httpx.post(f"{live.base_url}/api/blobs/{digest}", content=b"not read")
    assert again.status_code == 200  # already here: the body is not read
    statuses = list(client.create(model="pushed", files={"tiny.gguf": digest}, stream=True))
    assert statuses[-1].status == "success"
    assert any(digest in (s.status or "") for s in statuses)
    listed = {m.model: m for m in client.list().models}
    assert listed["pushed"].digest == digest.removeprefix("sha256:")
    assert client.generate(model="pushed", prompt="hi", options={"num_predict": 2}).eval_count == 2
    assert list((live.service.store.models_dir / "uploads").iterdir()) == []  # moved into the store
    assert httpx.head(f"{live.base_url}/api/blobs/{digest}").status_code == 200  # a stored model's file


def test_a_push_whose_bytes_differ_from_its_digest_keeps_nothing(server: LiveServer) -> None:
    wrong = "sha256:" + "0" * 64
    resp = httpx.post(f"{server.base_url}/api/blobs/{wrong}", content=b"some bytes")
    assert resp.status_code == 400 and "digest mismatch" in resp.json()["error"]
    assert httpx.head(f"{server.base_url}/api/blobs/{wrong}").status_code == 404
    assert list((server.service.store.models_dir / "uploads").iterdir()) == []
    bad = httpx.post(f"{server.base_url}/api/blobs/md5:abc", content=b"x")
    assert bad.status_code == 400 and bad.json() == {"error": "invalid digest format"}
    assert httpx.head(f"{server.base_url}/api/blobs/nonsense").status_code == 400


def test_a_pushed_file_that_is_no_gguf_is_refused_and_removed(server: LiveServer) -> None:
    data = b"definitely not a GGUF file"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{server.base_url}/api/blobs/{digest}", content=data).status_code == 201
    made = httpx.post(
        f"{server.base_url}/api/create", json={"model": "x", "files": {"x.gguf": digest}, "stream": False}
    )
    assert made.status_code == 400 and set(made.json()) == {"error"}
    assert (
        "x.gguf" in made.json()["error"] and str(server.service.store.models_dir) not in made.json()["error"]
    )
    assert httpx.head(f"{server.base_url}/api/blobs/{digest}").status_code == 404  # not kept
    assert [m["name"] for m in httpx.get(f"{server.base_url}/api/tags").json()["models"]] == [TINY]


@pytest.mark.parametrize(
    ("files", "extra", "words"),
    [
        ({"model.safetensors": "sha256:" + "1" * 64, "config.json": "sha256:" + "2" * 64}, {}, "one .gguf"),
        ({"a.gguf": "sha256:" + "1" * 64}, {}, "not found"),
        ({"a.gguf": "sha256:" + "1" * 64}, {"system": "hi"}, "FROM it"),
        ({"a.gguf": "nonsense"}, {}, "invalid digest format"),
        ({"../a.gguf": "sha256:" + "1" * 64}, {}, "invalid file name"),
        ({"/etc/a.gguf": "sha256:" + "1" * 64}, {}, "invalid file name"),
    ],
)
def test_files_that_cannot_make_a_model_are_a_400(
    server: LiveServer, files: dict[str, str], extra: dict[str, Any], words: str
) -> None:
    body = {"model": "m", "files": files, "stream": False, **extra}
    resp = httpx.post(f"{server.base_url}/api/create", json=body)
    assert resp.status_code == 400 and words in resp.json()["error"]


def test_pushing_needs_models_write(make_server: ServerFactory) -> None:
    live = make_server()
    _, reader = live.service.keys.create("reader", scopes=["models:read"])
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    resp = httpx.post(
        f"{live.base_url}/api/blobs/{digest}", content=b"x", headers={"Authorization": f"Bearer {reader}"}
    )
    assert resp.status_code == 403 and set(resp.json()) == {"error"}
    assert not (live.service.store.models_dir / "uploads").exists() or not list(
        (live.service.store.models_dir / "uploads").iterdir()
    )


def test_a_push_cut_off_midway_keeps_nothing_and_is_no_server_error(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = server.base_url.removeprefix("http://").split(":")
    digest = "sha256:" + "4" * 64
    with socket.create_connection((host, int(port))) as conn:
        head = f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 100000\r\n\r\n"
        conn.sendall(head.encode() + b"G" * 5000)
        time.sleep(0.5)  # the route is writing the upload now
    uploads = server.service.store.models_dir / "uploads"
    wait_until(lambda: not list(uploads.iterdir()), timeout=10)
    assert httpx.head(f"{server.base_url}/api/blobs/{digest}").status_code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_made_model_loads_embeds_takes_raw_prompts_and_a_callers_system(client: ollama.Client) -> None:
    client.create(
        model="mario", from_=TINY, system="You are Mario.", parameters={"num_predict": 2, "temperature": 0}
    )
    assert client.generate(model="mario").done_reason == "load"  # an empty prompt loads its model
    assert client.generate(model="mario", keep_alive=0).done_reason == "unload"
    assert len(client.embed(model="mario", input="hi").embeddings) == 1
    raw = client.generate(model="mario", prompt="hi", raw=True)
    assert raw.eval_count == 2  # its parameters, without its system prompt (a raw prompt has no turns)
    own = [{"role": "system", "content": "Be brief."}, *HI]
    assert client.chat(model="mario", messages=own).done  # one system turn: the model's, then the caller's
    assert client.generate(model="mario", prompt="hi", system="Be brief.").done


def test_a_stored_model_cannot_be_copied_onto_a_made_models_name(client: ollama.Client) -> None:
    client.create(model="mario", from_=TINY, system="x")
    with pytest.raises(ollama.ResponseError) as err:
        client.copy(TINY, "mario")
    assert err.value.status_code == 409
    assert [m.model for m in client.list().models].count("mario") == 1
