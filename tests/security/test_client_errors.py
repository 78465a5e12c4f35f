"""A client's mistake is a 4xx in the dialect's own envelope, never a 5xx, and never counts against a
circuit breaker or makes a route fall back to its next target.

Everything here goes through a real llmhost server on loopback: an out-of-vocabulary ``logit_bias``
key, a JSON schema whose grammar llama.cpp cannot parse, integers too big for any sampling field, and
a nonsensical ``days`` on ``/api/usage``; then routes over the local engine and over a fault-injecting
upstream, whose breakers must stay closed however many bad requests arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmhost.errors import AuthError, ConflictError, NotFoundError, RefusedError, RequestError
from llmhost.router.breaker import BreakerState, CircuitBreaker
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.providers.fault_server import Fault, FaultServer
from tests.router.test_gateway import ScriptedProvider, chat_req, gateway, settings_with, targets

OUT_OF_VOCAB = 99_999  # the tiny model has 264 tokens
BIG = "1" + "0" * 400  # a JSON integer of 401 digits
HUGE = "9" * 5000  # more digits than Python converts by default (4300)
MESSAGES = '[{"role":"user","content":"hi"}]'
# llama-cpp-python's json_schema_to_gbnf does not escape a quote inside a property name, so this
# schema compiles to GBNF that llama.cpp refuses to parse.
BAD_GRAMMAR_SCHEMA = '{"type":"object","properties":{"a\\"b":{"type":"string"}}}'


def post(live: LiveServer, path: str, raw: str) -> httpx.Response:
    """POST a body exactly as written (JSON's huge integers and Python's NaN literals included)."""
    headers = {"content-type": "application/json"}
    return httpx.post(f"{live.base_url}{path}", content=raw, headers=headers, timeout=30)


def openai_error(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 400, r.text[:300]
    error: dict[str, Any] = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def assert_client_error(path: str, r: httpx.Response) -> None:
    """A 400 in the envelope of the door that ``path`` belongs to."""
    assert r.status_code == 400, r.text[:300]
    body = r.json()
    if path.startswith("/api/"):  # Ollama: {"error": "<message>"}
        assert isinstance(body["error"], str) and body["error"]
    elif path == "/v1/messages":  # Anthropic
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:  # OpenAI chat / completions, Responses
        assert body["error"]["type"] == "invalid_request_error"


# ----- logit_bias ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_out_of_vocabulary_logit_bias_is_a_400_naming_logit_bias(server: LiveServer, stream: bool) -> None:
    chat = post(
        server,
        "/v1/chat/completions",
        f'{{"model":"{TINY}","messages":{MESSAGES},"max_tokens":2,"stream":{str(stream).lower()},'
        f'"logit_bias":{{"{OUT_OF_VOCAB}":5}}}}',
    )
    assert openai_error(chat)["param"] == "logit_bias"
    completion = post(
        server,
        "/v1/completions",
        f'{{"model":"{TINY}","prompt":"hi","max_tokens":2,"stream":{str(stream).lower()},'
        f'"logit_bias":{{"-1":5}}}}',
    )
    assert openai_error(completion)["param"] == "logit_bias"


def test_out_of_vocabulary_logit_bias_through_the_official_client(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            logit_bias={str(OUT_OF_VOCAB): 5},
        )
    assert caught.value.param == "logit_bias"
    assert "not in the vocabulary" in caught.value.message


# ----- grammars --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            f'{{"model":"{TINY}","messages":{MESSAGES},"max_tokens":2,'
            f'"response_format":{{"type":"json_schema","json_schema":{{"schema":{BAD_GRAMMAR_SCHEMA}}}}}}}',
        ),
        (
            "/v1/completions",
            f'{{"model":"{TINY}","prompt":"hi","max_tokens":2,'
            f'"response_format":{{"type":"json_schema","json_schema":{{"schema":{BAD_GRAMMAR_SCHEMA}}}}}}}',
        ),
        (
            "/v1/messages",
            f'{{"model":"{TINY}","messages":{MESSAGES},"max_tokens":2,'
            f'"output_config":{{"format":{{"type":"json_schema","schema":{BAD_GRAMMAR_SCHEMA}}}}}}}',
        ),
        (
            "/api/chat",
            f'{{"model":"{TINY}","stream":false,"messages":{MESSAGES},"format":{BAD_GRAMMAR_SCHEMA},'
            '"options":{"num_predict":2}}',
        ),
        (
            "/v1/responses",
            f'{{"model":"{TINY}","input":"hi","max_output_tokens":2,'
            f'"text":{{"format":{{"type":"json_schema","name":"x","schema":{BAD_GRAMMAR_SCHEMA}}}}}}}',
        ),
    ],
)
def test_a_schema_whose_grammar_does_not_parse_is_a_400(server: LiveServer, path: str, body: str) -> None:
    r = post(server, path, body)
    assert_client_error(path, r)
    assert "grammar" in r.text


def test_a_bad_grammar_names_response_format(server: LiveServer) -> None:
    r = post(
        server,
        "/v1/chat/completions",
        f'{{"model":"{TINY}","messages":{MESSAGES},"max_tokens":2,"stream":true,'
        f'"response_format":{{"type":"json_schema","json_schema":{{"schema":{BAD_GRAMMAR_SCHEMA}}}}}}}',
    )
    assert openai_error(r)["param"] == "response_format"


# ----- huge integers ---------------------------------------------------------------------------------
def _chat(extra: str) -> str:
    return f'{{"model":"{TINY}","messages":{MESSAGES},"max_tokens":2,{extra}}}'


def _ollama(options: str) -> str:
    return f'{{"model":"{TINY}","stream":false,"messages":{MESSAGES},"options":{{{options}}}}}'


HUGE_VALUES = [
    ("/v1/chat/completions", _chat(f'"top_k":{BIG}')),
    ("/v1/chat/completions", _chat(f'"top_k":{HUGE}')),
    ("/v1/chat/completions", _chat(f'"seed":{BIG}')),
    ("/v1/chat/completions", _chat(f'"seed":-{BIG}')),
    ("/v1/chat/completions", _chat(f'"n":{BIG}')),
    ("/v1/chat/completions", _chat(f'"logprobs":true,"top_logprobs":{BIG}')),
    ("/v1/chat/completions", f'{{"model":"{TINY}","messages":{MESSAGES},"max_tokens":{BIG}}}'),
    ("/v1/chat/completions", f'{{"model":"{TINY}","messages":{MESSAGES},"max_completion_tokens":{BIG}}}'),
    ("/v1/completions", f'{{"model":"{TINY}","prompt":"hi","max_tokens":{BIG}}}'),
    ("/v1/completions", f'{{"model":"{TINY}","prompt":"hi","max_tokens":2,"seed":{BIG}}}'),
    ("/v1/completions", f'{{"model":"{TINY}","prompt":"hi","max_tokens":2,"logprobs":{BIG}}}'),
    ("/v1/completions", f'{{"model":"{TINY}","prompt":"hi","max_tokens":2,"logit_bias":{{"{BIG}":1}}}}'),
    ("/v1/messages", _chat(f'"top_k":{BIG}')),
    ("/v1/messages", _chat(f'"top_k":{HUGE}')),
    ("/v1/messages", f'{{"model":"{TINY}","messages":{MESSAGES},"max_tokens":{BIG}}}'),
    ("/api/chat", _ollama(f'"top_k":{BIG}')),
    ("/api/chat", _ollama(f'"num_predict":{BIG}')),
    ("/api/chat", _ollama(f'"seed":{BIG}')),
    ("/api/chat", _ollama(f'"num_ctx":{BIG}')),
    ("/api/chat", _ollama('"top_k":1e400')),  # JSON's 1e400 reads as infinity
    ("/api/chat", _ollama('"num_predict":-1e400')),
    ("/api/chat", _ollama('"seed":NaN')),
    ("/api/chat", _ollama('"num_ctx":Infinity')),
    ("/api/chat", _ollama('"temperature":NaN')),
    ("/api/chat", _ollama(f'"seed":{HUGE}')),
    ("/api/generate", f'{{"model":"{TINY}","stream":false,"prompt":"hi","options":{{"seed":{BIG}}}}}'),
    ("/api/chat", f'{{"model":"{TINY}","stream":false,"messages":{MESSAGES},"top_logprobs":{BIG}}}'),
    ("/v1/responses", f'{{"model":"{TINY}","input":"hi","max_output_tokens":{BIG}}}'),
    ("/v1/responses", f'{{"model":"{TINY}","input":"hi","max_output_tokens":{HUGE}}}'),
    ("/v1/responses", f'{{"model":"{TINY}","input":"hi","max_output_tokens":2,"top_logprobs":{BIG}}}'),
    ("/v1/responses", f'{{"model":"{TINY}","input":"hi","max_output_tokens":2,"max_tool_calls":{BIG}}}'),
]


def test_huge_integers_in_sampling_fields_are_400s_on_every_door(server: LiveServer) -> None:
    # One server for all the cases: they are cheap, and the tiny box has two cores.
    failures = []
    for path, body in HUGE_VALUES:
        r = post(server, path, body)
        try:
            assert_client_error(path, r)
            assert len(r.text) < 1000  # the message does not echo 400 digits back
        except (AssertionError, KeyError, ValueError):
            failures.append(f"{path} {body[:120]} -> {r.status_code} {r.text[:160]}")
    assert not failures, "\n".join(failures)


def test_the_largest_sane_values_still_work(server: LiveServer) -> None:
    """The bounds reject nonsense, not values a client may mean: a 64-bit seed, a big ``max_tokens``
    cut to the context's room on the Anthropic door, Ollama's negative ``seed`` / ``num_predict``."""
    assert post(server, "/v1/chat/completions", _chat(f'"seed":{2**64 - 1}')).status_code == 200
    assert post(server, "/v1/chat/completions", _chat(f'"seed":{-(2**63)}')).status_code == 200
    r = post(server, "/v1/messages", f'{{"model":"{TINY}","messages":{MESSAGES},"max_tokens":{2**31 - 1}}}')
    assert r.status_code == 200, r.text
    assert post(server, "/api/chat", _ollama('"num_predict":2,"seed":-1,"num_ctx":4096')).status_code == 200


# ----- /api/usage?days= ------------------------------------------------------------------------------
@pytest.mark.parametrize("days", ["1e10", "-1", "nan", "inf", "-inf", "1e308"])
def test_usage_with_an_impossible_number_of_days_is_a_400(server: LiveServer, days: str) -> None:
    r = httpx.get(f"{server.base_url}/api/usage", params={"days": days})
    assert openai_error(r)["param"] == "days"


def test_usage_with_a_sane_number_of_days_answers(server: LiveServer) -> None:
    for days in ("0", "0.5", "36500"):
        assert httpx.get(f"{server.base_url}/api/usage", params={"days": days}).status_code == 200


# ----- breakers over the local engine ----------------------------------------------------------------
@pytest.fixture
def guarded(tmp_path: Path, tiny_model_path: Path) -> Iterator[LiveServer]:
    """A server with a route ``guarded`` over the local model, whose breaker opens at 5 failures."""
    settings = make_settings(
        tmp_path / "data",
        routes={"guarded": {"targets": [{"provider": "local", "model": TINY}], "retries": 1}},
        breaker={"failures": 5, "window": 60, "cooldown": 60},
    )
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    yield live
    live.stop()
    service.close()


def breaker_state(live: LiveServer, route: str, index: int = 0) -> str:
    routes = httpx.get(f"{live.base_url}/api/providers").json()["routes"]
    state: str = next(r for r in routes if r["name"] == route)["targets"][index]["breaker"]
    return state


def test_client_errors_do_not_open_a_local_routes_breaker(guarded: LiveServer) -> None:
    bad = [
        ("/v1/chat/completions", f'"messages":{MESSAGES},"logit_bias":{{"{OUT_OF_VOCAB}":5}}'),
        ("/v1/completions", f'"prompt":"hi","logit_bias":{{"{OUT_OF_VOCAB}":5}}'),
        ("/v1/chat/completions", f'"messages":{MESSAGES},"stream":true,"logit_bias":{{"-5":5}}'),
        (
            "/v1/chat/completions",
            f'"messages":{MESSAGES},"response_format":{{"type":"json_schema",'
            f'"json_schema":{{"schema":{BAD_GRAMMAR_SCHEMA}}}}}',
        ),
        ("/v1/completions", f'"prompt":"hi","logit_bias":{{"{OUT_OF_VOCAB}":5}}'),
        ("/v1/chat/completions", f'"messages":{MESSAGES},"logit_bias":{{"{OUT_OF_VOCAB}":5}}'),
    ]
    for path, fields in bad:
        r = post(guarded, path, f'{{"model":"guarded","max_tokens":2,{fields}}}')
        assert openai_error(r)["param"] in ("logit_bias", "response_format")
    assert breaker_state(guarded, "guarded") == "closed"
    good = post(
        guarded, "/v1/chat/completions", f'{{"model":"guarded","max_tokens":2,"messages":{MESSAGES}}}'
    )
    assert good.status_code == 200, good.text


# ----- breakers and fallback over a remote upstream --------------------------------------------------
@pytest.fixture
def remote(tmp_path: Path, tiny_model_path: Path) -> Iterator[tuple[LiveServer, FaultServer]]:
    """A route ``smart``: a fault-injecting upstream first, the local model as the backup."""
    fault = FaultServer().start()
    settings = make_settings(
        tmp_path / "data",
        providers={
            "flaky": {"type": "openai", "base_url": f"{fault.base_url}/v1", "health_interval": 0},
        },
        routes={
            "smart": {
                "targets": [{"provider": "flaky", "model": "m"}, {"provider": "local", "model": TINY}],
                "retries": 1,
                "backoff": 0.0,
            }
        },
        breaker={"failures": 2, "window": 60, "cooldown": 1.5},
    )
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    yield live, fault
    live.stop()
    service.close()
    fault.stop()


def smart(live: LiveServer, stream: bool = False) -> httpx.Response:
    return post(
        live,
        "/v1/chat/completions",
        f'{{"model":"smart","max_tokens":2,"stream":{str(stream).lower()},"messages":{MESSAGES}}}',
    )


BAD_FIELD = Fault(status=400, error={"error": {"message": "bad field", "type": "invalid_request_error"}})
BOOM = Fault(status=500, error={"error": {"message": "boom", "type": "server_error"}})


def test_an_upstreams_client_errors_neither_fall_back_nor_count(
    remote: tuple[LiveServer, FaultServer],
) -> None:
    live, fault = remote
    fault.reset(BAD_FIELD)
    for i in range(6):
        r = smart(live, stream=i % 2 == 1)
        assert openai_error(r)["message"].endswith("bad field")
    assert len(fault.requests) == 6  # no retry on the same target either
    assert breaker_state(live, "smart") == "closed"
    fault.reset()
    r = smart(live)
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == "flaky/m"


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_error_during_the_half_open_probe_does_not_wedge_the_breaker(
    remote: tuple[LiveServer, FaultServer], stream: bool
) -> None:
    live, fault = remote
    fault.reset(BOOM)
    for _ in range(2):  # two server errors (each retried once): open
        assert smart(live).headers["x-llmhost-target"] == f"local/{TINY}"
    assert breaker_state(live, "smart") == "open"
    time.sleep(1.6)  # cooldown over: the next request is the probe
    fault.reset(BAD_FIELD)
    assert openai_error(smart(live, stream))["message"].endswith("bad field")
    fault.reset()
    r = smart(live, stream)  # the probe ended without a verdict: this one probes again
    assert r.status_code == 200 and r.headers["x-llmhost-target"] == "flaky/m"
    assert breaker_state(live, "smart") == "closed"


# ----- the gateway's rule, for every 4xx the error tree has ------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        RequestError("bad", "x"),
        AuthError("no key"),
        RefusedError("policy"),
        NotFoundError("no such response"),
        ConflictError("busy"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_4xx_from_a_target_neither_falls_back_nor_counts(tmp_path: Path, error: Exception) -> None:
    a = ScriptedProvider("a", [error] * 6)
    b = ScriptedProvider("b")
    gw = gateway(
        settings_with(
            tmp_path, {"targets": targets("a", "b"), "retries": 2, "backoff": 0}, breaker={"failures": 2}
        ),
        {"a": a, "b": b},
    )
    for _ in range(6):
        with pytest.raises(type(error)):
            asyncio.run(gw.chat(chat_req()))
    assert len(a.calls) == 6 and b.calls == []
    assert all(br.state is BreakerState.CLOSED for br in gw.breakers.values())


def test_release_lets_the_next_request_probe_a_half_open_breaker() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=1, window=10, cooldown=1, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 2.0
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.release()
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()


def test_a_probe_that_never_gives_a_verdict_stops_holding_the_next_one_back() -> None:
    """A stream whose reader never came (so no success, failure or release) cannot shut the target
    out for good: after ``cooldown`` seconds the next request probes."""
    now = [0.0]
    breaker = CircuitBreaker(failures=1, window=10, cooldown=1, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 1.0
    assert breaker.allow()
    now[0] = 1.5
    assert not breaker.allow()
    now[0] = 2.0
    assert breaker.allow() and not breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
