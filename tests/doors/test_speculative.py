"""Speculative decoding (``speculative = "ngram"``) asked for through every door, with each door's official
client over real loopback HTTP: the answer is the answer of plain decoding, the engine did draft (its
``llmhost_model_draft_tokens_total`` grows), and a value other than ``ngram`` / ``none`` is a 400 in the
door's own error envelope. The prompt repeats one sentence, which is what gives the n-gram index drafts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from llmhost.cli.main import app
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server

REPEATED = "The cat sat on the mat. " * 6
MAX_TOKENS = 24
USER: Any = [{"role": "user", "content": REPEATED}]  # each client types its messages its own way


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[LiveServer]:
    """One server for the module: each test compares two answers of its own, so they share it."""
    settings = make_settings(tmp_path_factory.mktemp("speculative") / "data")
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    yield server
    server.stop()
    service.close()


def drafted(live: LiveServer) -> float:
    """``llmhost_model_draft_tokens_total`` of the tiny model, as ``/metrics`` reports it."""
    text = httpx.get(f"{live.base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llmhost_model_draft_tokens_total" and sample.labels.get("model") == TINY
    )


def speculates_the_same(live: LiveServer, answer: Callable[[dict[str, Any]], str]) -> None:
    """``answer(extra)`` gives the same text with ``speculative: "ngram"`` as without it (and with
    ``"none"``), and the ``ngram`` request, the only one of the three, drafts."""
    plain = answer({})
    before = drafted(live)
    assert answer({"speculative": "ngram"}) == plain
    after = drafted(live)
    assert after > before
    assert answer({"speculative": "none"}) == plain
    assert drafted(live) == after


@pytest.fixture
def oai(live: LiveServer, openai_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    return openai_client(live)


# ----- OpenAI: chat completions, completions, responses -----------------------------------------------------
def test_openai_chat_with_speculative_ngram_answers_as_without(live: LiveServer, oai: openai.OpenAI) -> None:
    def answer(extra: dict[str, Any]) -> str:
        resp = oai.chat.completions.create(
            model=TINY,
            messages=USER,
            max_tokens=MAX_TOKENS,
            temperature=0,
            logit_bias={"2": -100},  # no end-of-sequence token: the whole MAX_TOKENS are compared
            extra_body=extra,
        )
        assert resp.usage is not None and resp.usage.completion_tokens == MAX_TOKENS
        return resp.choices[0].message.content or ""

    speculates_the_same(live, answer)


def test_openai_completion_with_speculative_ngram_answers_as_without(
    live: LiveServer, oai: openai.OpenAI
) -> None:
    def answer(extra: dict[str, Any]) -> str:
        resp = oai.completions.create(
            model=TINY,
            prompt=REPEATED,
            max_tokens=MAX_TOKENS,
            temperature=0,
            logit_bias={"2": -100},
            extra_body=extra,
        )
        return resp.choices[0].text

    speculates_the_same(live, answer)


def test_openai_streamed_chat_with_speculative_ngram_answers_as_without(
    live: LiveServer, oai: openai.OpenAI
) -> None:
    def answer(extra: dict[str, Any]) -> str:
        chunks = oai.chat.completions.create(
            model=TINY,
            messages=USER,
            max_tokens=MAX_TOKENS,
            temperature=0,
            logit_bias={"2": -100},
            stream=True,
            extra_body=extra,
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    speculates_the_same(live, answer)


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_openai_refuses_an_unknown_speculative_value_in_its_envelope(
    oai: openai.OpenAI, endpoint: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        if endpoint == "chat":
            oai.chat.completions.create(
                model=TINY, messages=USER, max_tokens=4, extra_body={"speculative": "fast"}
            )
        else:
            oai.completions.create(model=TINY, prompt="a", max_tokens=4, extra_body={"speculative": "fast"})
    assert refused.value.status_code == 400
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["param"] == "speculative" and "ngram" in error["message"]


def test_responses_with_speculative_ngram_answer_as_without(live: LiveServer, oai: openai.OpenAI) -> None:
    def answer(extra: dict[str, Any]) -> str:
        resp = oai.responses.create(
            model=TINY,
            input=REPEATED,
            max_output_tokens=MAX_TOKENS,
            temperature=0,
            store=False,
            extra_body=extra,
        )
        return resp.output_text

    speculates_the_same(live, answer)


def test_responses_refuse_an_unknown_speculative_value_in_their_envelope(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=TINY, input="hi", max_output_tokens=4, extra_body={"speculative": "fast"})
    error = refused.value.body
    assert refused.value.status_code == 400
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["param"] == "speculative"


# ----- Anthropic --------------------------------------------------------------------------------------------
@pytest.fixture
def claude(live: LiveServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=live.base_url, api_key="unused", max_retries=0)
    yield client
    client.close()


def test_anthropic_messages_with_speculative_ngram_answer_as_without(
    live: LiveServer, claude: anthropic.Anthropic
) -> None:
    def answer(extra: dict[str, Any]) -> str:
        # This SDK has no ``temperature`` argument any more, so it travels in ``extra_body``.
        msg = claude.messages.create(
            model=TINY, max_tokens=MAX_TOKENS, messages=USER, extra_body={"temperature": 0, **extra}
        )
        return "".join(block.text for block in msg.content if block.type == "text")

    speculates_the_same(live, answer)


def test_anthropic_refuses_an_unknown_speculative_value_in_its_envelope(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model=TINY, max_tokens=4, messages=USER, extra_body={"speculative": "fast"})
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "speculative" in body["error"]["message"]


# ----- Ollama -----------------------------------------------------------------------------------------------
@pytest.fixture
def ollama_client(live: LiveServer) -> ollama.Client:
    return ollama.Client(host=live.base_url, timeout=60)


def test_ollama_chat_and_generate_with_speculative_option_answer_as_without(
    live: LiveServer, ollama_client: ollama.Client
) -> None:
    def chat(extra: dict[str, Any]) -> str:
        options = {"num_predict": MAX_TOKENS, "temperature": 0, **extra}
        return ollama_client.chat(model=TINY, messages=USER, options=options).message.content or ""

    def generate(extra: dict[str, Any]) -> str:
        options = {"num_predict": MAX_TOKENS, "temperature": 0, **extra}
        return ollama_client.generate(model=TINY, prompt=REPEATED, raw=True, options=options).response or ""

    speculates_the_same(live, chat)
    speculates_the_same(live, generate)


def test_ollama_refuses_an_unknown_speculative_option_in_its_envelope(live: LiveServer) -> None:
    body = {"model": TINY, "messages": USER, "stream": False, "options": {"speculative": "fast"}}
    r = httpx.post(f"{live.base_url}/api/chat", json=body, timeout=30)
    assert r.status_code == 400
    assert r.json() == {"error": 'option "speculative" must be "ngram" or "none"'}
    body["options"] = {"speculative": 1}
    assert httpx.post(f"{live.base_url}/api/chat", json=body, timeout=30).status_code == 400


# ----- the CLI ----------------------------------------------------------------------------------------------
def test_llmhost_run_takes_speculative_ngram_and_answers_as_without(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = make_settings(tmp_path / "data")
    make_service(settings, tiny_model_path).close()
    env = {"LLMHOST_DATA_DIR": str(settings.data_dir), "LLMHOST_ENGINE__N_THREADS": "1"}

    def run(*extra: str) -> str:
        args = ["run", TINY, REPEATED, "--raw", "--temperature", "0", "--max-tokens", str(MAX_TOKENS), *extra]
        result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert run("--speculative", "ngram") == run()
    refused = CliRunner().invoke(app, ["run", TINY, "hi", "--speculative", "fast"], env=env)
    assert refused.exit_code == 2 and "fast" in refused.output
