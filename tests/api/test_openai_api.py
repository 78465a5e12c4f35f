"""The OpenAI-compatible API, spoken to by the official ``openai`` client over real loopback HTTP.

The tiny random-weight model answers gibberish, so assertions are about shapes, counts and control:
``logit_bias`` forces a token when a test needs known text (token 3 + byte value is that byte).
"""

from __future__ import annotations

import base64
import json
import math
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from llmhost.service import Service
from tests.api.helpers import EOS, byte_token, chat
from tests.conftest import TINY, LiveServer, ServerFactory, make_settings

ClientFactory = Callable[..., openai.OpenAI]


def test_chat_completion_returns_generated_text_and_usage(client: openai.OpenAI) -> None:
    resp = chat(client, max_tokens=8, temperature=0, logit_bias={EOS: -100})
    assert resp.object == "chat.completion"
    assert resp.model == TINY
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 8
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8


def test_logit_bias_forces_tokens(client: openai.OpenAI) -> None:
    resp = chat(client, max_tokens=5, temperature=0, logit_bias={byte_token("x"): 100})
    assert resp.choices[0].message.content == "xxxxx"


def test_stop_string_ends_generation_with_stop(client: openai.OpenAI) -> None:
    resp = chat(client, max_tokens=10, logit_bias={byte_token("x"): 100}, stop=["xxx"])
    assert resp.choices[0].message.content == ""
    assert resp.choices[0].finish_reason == "stop"
    resp = client.completions.create(
        model=TINY, prompt="a", max_tokens=10, logit_bias={byte_token("y"): 100}, stop="yyy"
    )
    assert resp.choices[0].text == "" and resp.choices[0].finish_reason == "stop"


def test_streamed_chat_matches_the_non_streamed_answer(client: openai.OpenAI) -> None:
    full = chat(client, max_tokens=12, temperature=0, logit_bias={EOS: -100})
    chunks = list(
        chat(
            client,
            max_tokens=12,
            temperature=0,
            logit_bias={EOS: -100},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(chat(client, max_tokens=3, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_the_seed_decides_the_sample(client: openai.OpenAI) -> None:
    """The same seed gives the same sample; other seeds give other samples. The tiny model's next-token
    distribution at temperature 1 is close to uniform over 265 tokens, so two seeds agreeing on 32 tokens
    (end of sequence banned) would be an astronomical coincidence: a seed that is dropped or replaced on
    its way to the sampler fails here."""

    def sample(seed: int) -> str:
        resp = chat(client, max_tokens=32, temperature=1.0, seed=seed, logit_bias={EOS: -100})
        assert resp.usage is not None and resp.usage.completion_tokens == 32
        return str(resp.choices[0].message.content)

    first = sample(1234)
    assert sample(1234) == first
    others = [sample(seed) for seed in (1235, 1236, 7)]
    assert len({first, *others}) == 4, others


def test_sampling_parameters_are_accepted(client: openai.OpenAI) -> None:
    resp = chat(
        client,
        max_tokens=4,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=3,
        n=1,
        extra_body={"top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1},
    )
    assert resp.usage is not None and 1 <= resp.usage.completion_tokens <= 4


def test_completion_and_streamed_completion(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=TINY, prompt="Once upon", max_tokens=6, temperature=0, logit_bias={EOS: -100}
    )
    assert resp.object == "text_completion"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 6
    stream = client.completions.create(
        model=TINY,
        prompt="Once upon",
        max_tokens=6,
        temperature=0,
        logit_bias={EOS: -100},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == resp.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == resp.usage.prompt_tokens


def test_completion_echo_and_token_prompt(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=TINY, prompt="abc", max_tokens=2, echo=True)
    assert resp.choices[0].text.startswith("abc")
    resp = client.completions.create(model=TINY, prompt=[1, 100, 101], max_tokens=2)
    assert resp.usage is not None and resp.usage.prompt_tokens == 3


def test_default_completion_max_tokens_is_16(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=TINY, prompt="a", logit_bias={EOS: -100})
    assert resp.usage is not None and resp.usage.completion_tokens == 16


def test_embeddings_float_and_base64(client: openai.OpenAI, server: LiveServer) -> None:
    # The openai client asks for base64 by default and decodes it.
    resp = client.embeddings.create(model=TINY, input=["hello world", "the cat"])
    assert [d.index for d in resp.data] == [0, 1]
    vec = resp.data[0].embedding
    assert len(vec) == 64
    assert math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-4)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0
    raw = httpx.post(
        f"{server.base_url}/v1/embeddings",
        json={"model": TINY, "input": "hello world", "encoding_format": "float"},
    ).json()
    assert raw["data"][0]["embedding"] == pytest.approx(vec, abs=1e-6)
    b64 = httpx.post(
        f"{server.base_url}/v1/embeddings",
        json={"model": TINY, "input": "hello world", "encoding_format": "base64"},
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<64f", base64.b64decode(b64))
    assert list(decoded) == pytest.approx(vec, abs=1e-6)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert TINY in ids
    assert client.models.retrieve(TINY).id == TINY
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope:1b")


def test_json_object_response_format_gives_valid_json(client: openai.OpenAI) -> None:
    """JSON mode constrains the text to an object, and the grammar's end ends the answer. The bias makes
    "}" the model's first wish at every step: the grammar must put "{" first, then accepts "}" (an
    unconstrained model would answer "}}}..."), and after the object only a little whitespace may follow,
    so the answer always completes well inside max_tokens."""
    resp = chat(
        client,
        max_tokens=64,
        temperature=0,
        logit_bias={byte_token("}"): 100},
        response_format={"type": "json_object"},
    )
    content = resp.choices[0].message.content or ""
    assert resp.choices[0].finish_reason == "stop", content
    assert json.loads(content) == {}


COLOUR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
    "required": ["colour"],
    "additionalProperties": False,
}


def test_json_schema_response_format_always_completes_and_validates(client: openai.OpenAI) -> None:
    """A fixed-shape schema (one enum-valued key; the schema grammar allows one optional space between
    parts) reaches its end within ~20 tokens whatever the model samples: every answer stops and
    validates."""
    for seed in (1, 2, 3):
        resp = chat(
            client,
            max_tokens=64,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": COLOUR_SCHEMA}},
        )
        content = resp.choices[0].message.content or ""
        assert resp.choices[0].finish_reason == "stop", (seed, content)
        answer = json.loads(content)
        assert set(answer) == {"colour"} and answer["colour"] in {"red", "green", "blue"}, content


def _raw_controls_in_strings(text: str) -> list[str]:
    """Control characters inside JSON strings of ``text`` (which may be cut off): JSON forbids them."""
    found, inside, escaped = [], False, False
    for ch in text:
        if inside and not escaped and ch == '"':
            inside = False
        elif not inside and ch == '"':
            inside = True
        elif inside and ord(ch) < 0x20:
            found.append(ch)
        escaped = inside and not escaped and ch == "\\"
    return found


def test_a_json_schema_string_never_holds_a_raw_control_character(client: openai.OpenAI) -> None:
    # The tiny model's newline and tab byte tokens pushed hard: the grammar keeps them out of strings
    # (llama-cpp-python's own converter let them in, and the SDK's parse() then failed on the answer).
    schema = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    for seed in (1, 2):
        resp = chat(
            client,
            max_tokens=48,
            seed=seed,
            logit_bias={"13": 30, "12": 30},  # <0x0A>, <0x09>
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )
        content = resp.choices[0].message.content or ""
        assert content.startswith("{") and _raw_controls_in_strings(content) == [], content


# ----- errors ---------------------------------------------------------------------------------------


def test_unknown_model_is_404_with_openai_envelope(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        chat(client, model="missing:7b")
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and body["param"] == "model"


def test_negative_max_tokens_is_400_naming_the_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        chat(client, max_tokens=-1)
    assert exc.value.status_code == 400
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "max_tokens"


def test_bad_json_is_400(server: LiveServer) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]


def test_missing_messages_and_wrong_types_are_400(server: LiveServer) -> None:
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": TINY})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert r.json()["error"]["code"] == "missing_required_parameter"
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": TINY, "messages": [{"role": "wizard", "content": "hi"}]},
    )
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages[0]")
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": TINY, "messages": [{"role": "user", "content": "hi"}], "temperature": 5},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_n_returns_that_many_choices_decoded_side_by_side(client: openai.OpenAI) -> None:
    resp = chat(client, n=3, max_tokens=6, logit_bias={EOS: -100}, seed=1)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and c.message.content for c in resp.choices)
    assert resp.usage is not None and resp.usage.completion_tokens == 18
    done = client.completions.create(model=TINY, prompt="a", n=2, max_tokens=4, logit_bias={EOS: -100})
    assert [c.index for c in done.choices] == [0, 1]
    assert done.usage is not None and done.usage.completion_tokens == 8


def test_n_streams_every_choice_with_its_own_index(client: openai.OpenAI) -> None:
    chunks = list(chat(client, n=2, max_tokens=5, logit_bias={EOS: -100}, stream=True))
    finished = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finished == {0: "length", 1: "length"}
    text = {
        i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i)
        for i in (0, 1)
    }
    assert all(text.values())


def test_n_above_the_slot_count_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        chat(client, n=5)  # the test model has 4 slots
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "n"


def test_prompt_over_the_context_window_is_400_with_counts(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=TINY, prompt="x" * 600, max_tokens=1)
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "context_length_exceeded"
    assert "512" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        chat(client, max_tokens=10_000)
    assert "maximum context length is 512" in exc.value.message


def test_oversized_body_is_413(server: LiveServer) -> None:
    big = "x" * (9 * 1024 * 1024)
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": TINY, "messages": [{"role": "user", "content": big}]},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_image_content_is_rejected_clearly(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        chat(
            client,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
            ],
        )
    assert "image" in exc.value.message


def test_text_content_parts_are_joined(client: openai.OpenAI, server: LiveServer) -> None:
    """Text parts are joined into one message: the prompt is the one the plain string gives, counted
    exactly (the token-counting endpoint renders the same template); usage adds up."""
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "hello"}]
    resp = chat(client, messages=[{"role": "user", "content": parts}], max_tokens=2, logit_bias={EOS: -100})
    counted = httpx.post(
        f"{server.base_url}/v1/messages/count_tokens",
        json={"model": TINY, "messages": [{"role": "user", "content": "Say hello"}]},
    )
    assert counted.status_code == 200, counted.text
    prompt_tokens = counted.json()["input_tokens"]
    assert prompt_tokens > len("Say hello")  # the template's markup is counted too
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (
        prompt_tokens,
        2,
        prompt_tokens + 2,
    )
    plain = chat(client, max_tokens=2, logit_bias={EOS: -100})
    assert plain.usage is not None and plain.usage.prompt_tokens == prompt_tokens


def test_max_completion_tokens_caps_the_answer_and_wins_over_max_tokens(client: openai.OpenAI) -> None:
    """``max_completion_tokens`` (OpenAI's newer name) caps the completion; given both, it wins over
    ``max_tokens``, as the chat translation defines."""
    for kw in ({"max_completion_tokens": 3}, {"max_completion_tokens": 3, "max_tokens": 9}):
        resp = chat(client, temperature=0, logit_bias={EOS: -100}, **kw)
        assert resp.choices[0].finish_reason == "length", kw
        assert resp.usage is not None and resp.usage.completion_tokens == 3, kw
    resp = chat(client, max_tokens=5, temperature=0, logit_bias={EOS: -100})
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_a_repeated_prompt_reports_its_cached_prefix(client: openai.OpenAI) -> None:
    """``prompt_tokens_details.cached_tokens``: 0 on a fresh server; when the same prompt comes again
    its slot still holds the prompt, and all of it but the last token (whose logits are needed to
    sample) is reused and reported, in a plain answer and in a stream's usage chunk."""
    ask: dict[str, Any] = {"max_tokens": 4, "temperature": 0, "logit_bias": {EOS: -100}}
    first = chat(client, **ask)
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    again = chat(client, **ask)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    assert again.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **ask))
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1


def test_unknown_route_is_404_envelope(server: LiveServer) -> None:
    r = httpx.get(f"{server.base_url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_health_and_ready(server: LiveServer) -> None:
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/ready").json()
    assert ready["status"] == "ready" and TINY in ready["models"]


# ----- auth -----------------------------------------------------------------------------------------


def test_api_key_is_required_when_configured(
    make_server: ServerFactory, openai_client: ClientFactory
) -> None:
    live = make_server(api_key="s3cret")
    good = openai_client(live, api_key="s3cret")
    assert chat(good, max_tokens=2).usage is not None
    bad = openai_client(live, api_key="wrong")
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(bad, max_tokens=2)
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "invalid_api_key"
    assert "s3cret" not in str(exc.value.body)
    assert exc.value.response.headers["www-authenticate"] == 'Bearer realm="llmhost", error="invalid_token"'
    missing = httpx.get(f"{live.base_url}/v1/models")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="llmhost"'
    assert httpx.get(f"{live.base_url}/health").status_code == 200


# ----- readiness ------------------------------------------------------------------------------------


class SlowStartService(Service):
    """A real service whose start waits for a signal, to observe the not-ready window."""

    release = threading.Event()

    async def startup(self, *, preload: bool = True) -> None:
        import asyncio

        await asyncio.to_thread(self.release.wait, 30)
        await super().startup(preload=preload)


def test_not_ready_until_the_default_model_is_loaded(tmp_path: Any, tiny_model_path: Any) -> None:
    from llmhost.doors.http.app import create_app

    settings = make_settings(tmp_path / "data")
    service = SlowStartService(settings)
    service.store.import_file(tiny_model_path, TINY)
    live = LiveServer(create_app(settings, service)).start(wait_ready=False)
    try:
        r = httpx.get(f"{live.base_url}/ready")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        r = httpx.post(
            f"{live.base_url}/v1/chat/completions",
            json={"model": TINY, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
        SlowStartService.release.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{live.base_url}/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        SlowStartService.release.set()
        live.stop()
        service.close()


def test_json_body_without_json_content_type_is_accepted(server: LiveServer) -> None:
    # `curl -d '{...}'` sends application/x-www-form-urlencoded; the README's first example relies on this.
    body = json.dumps({"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"


def test_usage_is_recorded_and_summarised(server: LiveServer, tmp_path: Any) -> None:
    body = {"model": TINY, "prompt": "hi", "max_tokens": 3, "logit_bias": {EOS: -100}}
    for _ in range(2):
        assert httpx.post(f"{server.base_url}/v1/completions", json=body).status_code == 200
    rows = httpx.get(f"{server.base_url}/api/usage", params={"by": "model"}).json()["rows"]
    [row] = [r for r in rows if r["model"] == TINY]
    assert row["requests"] >= 2 and row["completion_tokens"] >= 6
    by_day = httpx.get(f"{server.base_url}/api/usage", params={"by": "day"}).json()["rows"]
    assert by_day and by_day[0]["requests"] >= 2
    assert httpx.get(f"{server.base_url}/api/usage", params={"by": "nope"}).status_code == 400
    described = httpx.get(f"{server.base_url}/api/providers").json()
    assert {"name": "local", "type": "local"} in described["providers"]


def test_responses_name_the_target_that_answered(server: LiveServer) -> None:
    r = httpx.post(f"{server.base_url}/v1/completions", json={"model": TINY, "prompt": "hi", "max_tokens": 2})
    assert r.headers["x-llmhost-target"] == f"local/{TINY}"
