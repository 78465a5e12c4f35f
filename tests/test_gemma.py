"""The embedded default model (Gemma 3 270M base) end to end through the HTTP API.

The base model's answers are weak, so nothing here depends on answer quality: greedy output must be
repeatable, grammar-constrained output must parse and validate, embeddings must have the model's width.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from llmhost.config import load_settings
from llmhost.models.default import DEFAULT_MODEL_NAME
from llmhost.service import Service
from tests.conftest import LiveServer, start_server

pytestmark = pytest.mark.gemma
MODEL = DEFAULT_MODEL_NAME


@pytest.fixture(scope="module")
def gemma_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("gemma-data")
    settings = load_settings(
        None,
        data_dir=data,
        default_model=MODEL,
        engine={"n_ctx": 1024, "n_parallel": 4, "n_batch": 256, "n_threads": 2},
    )
    service = Service(settings)
    yield service
    service.close()


@pytest.fixture(scope="module")
def gemma_server(gemma_service: Service) -> Iterator[LiveServer]:
    live = start_server(gemma_service.settings, gemma_service)
    yield live
    live.stop()


@pytest.fixture
def client(gemma_server: LiveServer, openai_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    return openai_client(gemma_server)


def token_id(service: Service, text: str) -> str:
    """Gemma's token id (as a ``logit_bias`` key) for ``text``, which must be one token."""
    loaded = service.models.get_loaded(MODEL)
    assert loaded is not None
    ids = loaded.runner.vocab.tokenize(text, add_special=False)
    assert len(ids) == 1, ids
    return str(ids[0])


def test_default_model_is_listed_with_its_metadata(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_greedy_chat_is_repeatable(client: openai.OpenAI) -> None:
    def ask() -> str:
        resp = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=16, temperature=0
        )
        assert resp.usage is not None and resp.usage.prompt_tokens == 11  # <bos> + Gemma turn format
        return resp.choices[0].message.content or ""

    first = ask()
    assert first and ask() == first


def test_completion_continues_text(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert resp.choices[0].text.strip()
    assert resp.usage is not None and resp.usage.completion_tokens <= 8


SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "boolean"},
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
    },
    "required": ["answer", "colour"],
    "additionalProperties": False,
}


def _valid(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and set(obj) == {"answer", "colour"}
        and isinstance(obj["answer"], bool)
        and obj["colour"] in {"red", "green", "blue"}
    )


def test_json_schema_output_parses_and_validates(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
        max_tokens=64,
        temperature=0.8,
        seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
    )
    assert resp.choices[0].finish_reason == "stop"
    assert _valid(json.loads(resp.choices[0].message.content or ""))


def test_constrained_and_free_requests_share_a_batch(client: openai.OpenAI) -> None:
    results: dict[str, str] = {}

    def constrained(i: int) -> None:
        resp = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Give me JSON number {i}"}],
            max_tokens=64,
            seed=i,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
        )
        results[f"c{i}"] = resp.choices[0].message.content or ""

    def free(i: int) -> None:
        resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24, seed=i)
        results[f"f{i}"] = resp.choices[0].text

    threads = [threading.Thread(target=constrained, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=free, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(_valid(json.loads(results[f"c{i}"])) for i in range(2))
    assert all(f"f{i}" in results for i in range(2))


def test_json_object_output_parses(client: openai.OpenAI, gemma_service: Service) -> None:
    """JSON mode over Gemma's 262k-token vocabulary (many tokens span several JSON characters) ends with
    the grammar. A free object could run past max_tokens in a long string, so the bias makes "{" and "}"
    the model's first wishes: the grammar must take "{" first (not a "{\"" that opens a key), refuse a
    second "{", take "}", and after the object allow only a little whitespace, so the answer always
    completes and parses."""
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply with a JSON object."}],
        max_tokens=96,
        temperature=0,
        logit_bias={token_id(gemma_service, "{"): 100, token_id(gemma_service, "}"): 100},
        response_format={"type": "json_object"},
    )
    content = resp.choices[0].message.content or ""
    assert resp.choices[0].finish_reason == "stop", content
    assert json.loads(content) == {}


def test_embeddings_have_the_model_width(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model=MODEL, input=["hello", "goodbye"])
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 640


def test_import_is_idempotent_and_verified(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "d")
    service = Service(settings)
    try:
        first = service.prepare_default_model()
        assert first.digest.startswith("sha256:a5fd3b62")
        assert service.prepare_default_model() == first
    finally:
        service.close()


def test_ollama_context_continues_a_conversation(gemma_server: LiveServer, gemma_service: Service) -> None:
    import ollama

    client = ollama.Client(host=gemma_server.base_url, timeout=120)
    options = {"num_predict": 8, "temperature": 0}
    first = client.generate(model=MODEL, prompt="Name a colour.", options=options)
    assert first.context and len(first.context) == first.prompt_eval_count + first.eval_count  # type: ignore[operator]
    second = client.generate(model=MODEL, prompt="And another one?", context=first.context, options=options)
    assert second.context and list(second.context[: len(first.context)]) == list(first.context)
    loaded = gemma_service.models.get_loaded(MODEL)
    assert loaded is not None
    vocab = loaded.runner.vocab
    bos, turn = vocab.bos, vocab.tokenize("<start_of_turn>", add_special=False, parse_special=True)
    assert first.context[0] == bos and list(second.context).count(bos) == 1
    # The new turn follows the old one's tokens: the chat template's turn, without a second BOS.
    assert list(second.context[len(first.context) : len(first.context) + len(turn)]) == turn
    again = client.generate(model=MODEL, prompt="And another one?", context=first.context, options=options)
    assert again.response == second.response  # greedy: the same continuation
