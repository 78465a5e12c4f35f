"""Predicted Outputs (``prediction``) with the official client: the local engine drafts from the predicted
text, so an answer that repeats it takes drafted tokens; the answer itself is the same."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TINY, LiveServer

HI: Any = [{"role": "user", "content": "Say hello"}]
EOS = "2"  # the tiny model's end-of-generation token: biased away, answers run to max_tokens


def accepted(server: LiveServer) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    return sum(
        float(v)
        for v in re.findall(r"^llmhost_model_draft_accepted_tokens_total\{[^}]*\} (\S+)$", text, re.M)
    )


def ask(client: openai.OpenAI, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "model": TINY,
        "messages": HI,
        "max_tokens": 24,
        "temperature": 0,
        "logit_bias": {EOS: -100},
    }
    return client.chat.completions.create(**{**args, **kw})


def test_an_answer_that_repeats_its_prediction_takes_drafted_tokens(
    client: openai.OpenAI, server: LiveServer
) -> None:
    plain = ask(client).choices[0].message.content
    before = accepted(server)
    predicted = ask(client, prediction={"type": "content", "content": plain})
    assert predicted.choices[0].message.content == plain
    assert accepted(server) - before >= 8  # most of the 24 tokens came as accepted drafts
    parts = ask(client, prediction={"type": "content", "content": [{"type": "text", "text": plain}]})
    assert parts.choices[0].message.content == plain
    streamed = ask(client, prediction={"type": "content", "content": plain}, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == plain


def test_a_wrong_prediction_changes_nothing_but_speed(client: openai.OpenAI) -> None:
    plain = ask(client).choices[0].message.content
    wrong = ask(client, prediction={"type": "content", "content": "something else entirely " * 20})
    assert wrong.choices[0].message.content == plain


def test_a_prediction_of_another_type_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, prediction={"type": "audio", "content": "x"})
    assert err.value.param is not None and err.value.param.startswith("prediction")
