"""Token log-probabilities (``logprobs``) on chat and completions, through the official client."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest

from tests.api.helpers import EOS, chat
from tests.conftest import TINY, LiveServer


def test_chat_logprobs_give_one_entry_per_token_with_sorted_alternatives(client: openai.OpenAI) -> None:
    resp = chat(client, max_tokens=6, temperature=0, logit_bias={EOS: -100}, logprobs=True, top_logprobs=3)
    choice = resp.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert resp.usage is not None and len(entries) == resp.usage.completion_tokens == 6
    for entry in entries:
        assert entry.logprob <= 0.0 and math.isfinite(entry.logprob)
        assert bytes(entry.bytes or []).decode("utf-8", errors="replace") == entry.token
        alts = [alt.logprob for alt in entry.top_logprobs]
        assert len(alts) == 3 and alts == sorted(alts, reverse=True)
        # Greedy picks the likeliest token: it is the first alternative.
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
    assert sum(math.exp(alt.logprob) for alt in entries[0].top_logprobs) <= 1.0 + 1e-6


def test_chat_without_logprobs_reports_none(client: openai.OpenAI) -> None:
    resp = chat(client, max_tokens=3, temperature=0)
    assert resp.choices[0].logprobs is None


def test_streamed_chat_logprobs_cover_every_token(client: openai.OpenAI) -> None:
    stream = chat(
        client,
        max_tokens=8,
        temperature=0,
        logit_bias={EOS: -100},
        logprobs=True,
        top_logprobs=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    entries: list[Any] = []
    completion_tokens = None
    for chunk in stream:
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                entries.extend(choice.logprobs.content)
    assert completion_tokens == 8 and len(entries) == 8
    assert all(len(e.top_logprobs) == 1 for e in entries)


def test_completion_logprobs_use_the_legacy_shape(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=TINY, prompt="Once", max_tokens=5, temperature=0, logit_bias={EOS: -100}, logprobs=2
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == 5
    assert lp.top_logprobs is not None and all(1 <= len(d) <= 3 for d in lp.top_logprobs)
    assert lp.text_offset is not None and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top[token] == pytest.approx(value)


def test_forced_tokens_still_report_the_models_own_logprob(client: openai.OpenAI) -> None:
    """Log-probabilities are the model's, before logit_bias or temperature reshape them."""
    x = str(3 + ord("x"))
    resp = client.completions.create(
        model=TINY, prompt="Once", max_tokens=4, temperature=0, logit_bias={x: 100}, logprobs=1
    )
    lp = resp.choices[0].logprobs
    assert resp.choices[0].text == "xxxx"
    assert lp is not None and lp.tokens == ["x"] * 4
    assert "".join(lp.tokens) == resp.choices[0].text
    assert all(v is not None and v < -1.0 for v in lp.token_logprobs or [])  # random weights: x is unlikely


def test_streamed_completion_logprobs(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=TINY,
        prompt="Once",
        max_tokens=6,
        temperature=0,
        logit_bias={EOS: -100},
        logprobs=0,
        stream=True,
    )
    tokens: list[str] = []
    offsets: list[int] = []
    for chunk in stream:
        lp = chunk.choices[0].logprobs if chunk.choices else None
        if lp is not None and lp.tokens:
            tokens.extend(lp.tokens)
            offsets.extend(lp.text_offset or [])
    assert len(tokens) == 6 and offsets == sorted(offsets) and offsets[0] == 0


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"logprobs": 1, "echo": True}, "logprobs"),
    ],
)
def test_bad_logprobs_requests_are_400(
    server: LiveServer, path: str, body: dict[str, Any], param: str
) -> None:
    base: dict[str, Any] = {"model": TINY, "max_tokens": 2}
    if path == "completions":
        base["prompt"] = "hi"
    else:
        base["messages"] = [{"role": "user", "content": "hi"}]
    r = httpx.post(f"{server.base_url}/v1/{path}", json={**base, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and param in (error.get("param") or error["message"])
