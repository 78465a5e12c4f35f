"""``speculative``: the local provider turns a request's value, else the model's ``[models."X"]`` setting,
into the engine's :class:`SamplingParams`; the remote providers never send it (OpenAI and Anthropic
refuse fields they do not know, and no upstream has llmhost's engine)."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost.config import DEFAULT_DRAFT_MAX, ModelSettings
from llmhost.core.types import Sampling
from llmhost.providers.anthropic import AnthropicProvider
from llmhost.providers.local import engine_sampling
from llmhost.providers.ollama import OllamaProvider
from llmhost.providers.openai_compat import OpenAICompatProvider
from tests.conftest import LiveServer
from tests.providers.conftest import ANTHROPIC_KEY, OPENAI_KEY, MakeProvider, chat, collect, completion, user
from tests.providers.wire_servers import recorded


# ----- the local provider: request > model > off ------------------------------------------------------
@pytest.mark.parametrize(
    ("asked", "model", "engine"),
    [
        (None, None, None),
        (None, "none", None),
        (None, "ngram", "ngram"),
        ("ngram", None, "ngram"),
        ("ngram", "none", "ngram"),
        ("none", "ngram", None),  # a request can turn off what its model turns on
        ("none", None, None),
    ],
)
def test_the_requests_speculative_wins_over_the_models(asked: Any, model: Any, engine: str | None) -> None:
    params = engine_sampling(Sampling(speculative=asked), ModelSettings(speculative=model))
    assert params.speculative == engine


def test_draft_max_comes_from_the_model_else_the_default() -> None:
    assert (
        engine_sampling(Sampling(speculative="ngram"), ModelSettings()).draft_max == DEFAULT_DRAFT_MAX == 16
    )
    # The model's draft_max holds for requests that turn speculation on by themselves, too.
    assert engine_sampling(Sampling(speculative="ngram"), ModelSettings(draft_max=4)).draft_max == 4
    params = engine_sampling(Sampling(), ModelSettings(speculative="ngram", draft_max=64))
    assert (params.speculative, params.draft_max) == ("ngram", 64)


def test_the_models_sampling_defaults_still_fill_what_the_request_leaves_unset() -> None:
    model = ModelSettings(temperature=0.3, top_k=7, min_p=0.2, repeat_penalty=1.2, speculative="ngram")
    params = engine_sampling(Sampling(top_p=0.5), model)
    assert (params.temperature, params.top_p, params.top_k, params.min_p, params.repeat_penalty) == (
        0.3,
        0.5,
        7,
        0.2,
        1.2,
    )
    asked = engine_sampling(Sampling(temperature=1.5, top_k=0, min_p=0.0, repeat_penalty=1.0), model)
    assert (asked.temperature, asked.top_k, asked.min_p, asked.repeat_penalty) == (1.5, 0, 0.0, 1.0)
    plain = engine_sampling(Sampling(), ModelSettings())
    assert (plain.temperature, plain.top_p, plain.top_k, plain.min_p, plain.repeat_penalty) == (
        1.0,
        1.0,
        0,
        0.0,
        1.0,
    )


# ----- the remote providers: never on the wire ---------------------------------------------------------
@pytest.mark.anyio
async def test_openai_compatible_upstreams_never_get_speculative(
    openai_upstream: LiveServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(
        OpenAICompatProvider, "remote", f"{openai_upstream.base_url}/v1", api_key=OPENAI_KEY
    )
    await provider.answer(chat("echo-1", user("hi"), speculative="ngram", temperature=0.5))
    body = recorded(openai_upstream)[-1]["body"]
    assert body["temperature"] == 0.5 and "speculative" not in body
    await collect(provider.stream(completion("echo-1", "hi", speculative="none")))
    assert "speculative" not in recorded(openai_upstream)[-1]["body"]


@pytest.mark.anyio
async def test_anthropic_never_gets_speculative(
    anthropic_upstream: LiveServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(AnthropicProvider, "claude", anthropic_upstream.base_url, api_key=ANTHROPIC_KEY)
    await provider.answer(chat("claude-echo-1", user("hi"), speculative="ngram", top_k=5))
    body = recorded(anthropic_upstream)[-1]["body"]
    assert body["top_k"] == 5 and "speculative" not in body


@pytest.mark.anyio
async def test_ollama_never_gets_speculative(
    ollama_upstream: LiveServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(OllamaProvider, "ollama", ollama_upstream.base_url)
    await provider.answer(chat("llama3.2:1b", user("hi"), speculative="ngram", top_k=5))
    body = recorded(ollama_upstream)[-1]["body"]
    assert body["options"] == {"top_k": 5} and "speculative" not in body
