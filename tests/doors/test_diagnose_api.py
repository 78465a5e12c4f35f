"""The diagnose engine over real loopback HTTP: ``/v1/diagnose`` with a scripted upstream model (the
fault server answering the JSON a model would, so validation, filtering, de-duplication and ranking
are checked exactly) and with the real tiny model (its grammar-held output always parses); the real
all-MiniLM embedding model selects examples and finds duplicates; the response cache; the batch
stream; feedback; ``GET /v1/diagnose/model``; and ``llmhost diagnose report`` on recorded feedback."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from llmhost.cli.main import app
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.providers.fault_server import Fault, FaultServer
from tests.tiny_gguf import write_tiny_llama_gguf

ServerFactory = Callable[..., LiveServer]

DOC: dict[str, Any] = {
    "summary": "checkout returns 500 since the deploy",
    "errors": [
        {
            "id": "e1",
            "type": "KeyError",
            "message": "'user_id'",
            "stack": ["handler.py:10"],
            "component": "api",
        }
    ],
    "metrics": [{"name": "db_pool_in_use", "expected": 10, "observed": 50, "component": "db-pool"}],
    "relations": [{"source": "api", "target": "postgres"}],
}

SUGGESTIONS = [
    {
        "suggestion": "Add the missing user_id field to the session payload",
        "confidence": 0.9,
        "components": ["api", "mainframe"],
        "actions": ["patch the serializer"],
        "rationale": "KeyError",
    },
    {
        "suggestion": "Add the missing user_id field to the session payload.",
        "confidence": 0.8,
        "components": ["api"],
        "actions": [],
        "rationale": "duplicate",
    },
    {
        "suggestion": "Reboot the mainframe",
        "confidence": 0.95,
        "components": ["mainframe"],
        "actions": [],
        "rationale": "unknown component",
    },
    {
        "suggestion": "Rewrite everything in Rust",
        "confidence": 0.2,
        "components": [],
        "actions": [],
        "rationale": "low confidence",
    },
    {
        "suggestion": "Increase the connection pool size",
        "confidence": 0.7,
        "components": ["db-pool"],
        "actions": ["increase the connection pool size to 80"],
        "rationale": "pool saturated",
    },
    {
        "suggestion": "Decrease the connection pool size",
        "confidence": 0.65,
        "components": ["db-pool"],
        "actions": ["decrease the connection pool size to 20"],
        "rationale": "fewer connections",
    },
]


def oracle_says(content: str) -> Fault:
    message = {"role": "assistant", "content": content}
    usage = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
    return Fault(
        answer={
            "id": "chatcmpl-o",
            "object": "chat.completion",
            "created": 0,
            "model": "oracle",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
    )


@pytest.fixture(scope="module")
def oracle() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


@contextlib.contextmanager
def serving_oracle(
    data_dir: Path, tiny_model_path: Path, oracle: FaultServer, **overrides: Any
) -> Iterator[LiveServer]:
    """A server whose diagnose model is the route ``diag`` to the scripted ``oracle`` upstream;
    ``overrides`` are more settings (a ``diagnose`` table merges with ``model = "diag"``)."""
    providers = {"oracle": {"type": "openai", "base_url": f"{oracle.base_url}/v1", "health_interval": 0}}
    routes = {"diag": {"targets": [{"provider": "oracle", "model": "m"}], "retries": 0}}
    diagnose = {"model": "diag", **overrides.pop("diagnose", {})}
    settings = make_settings(data_dir, providers=providers, routes=routes, diagnose=diagnose, **overrides)
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    try:
        yield server
    finally:
        server.stop()
        service.close()


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path, oracle: FaultServer
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("diagnose") / "data"
    with serving_oracle(data_dir, tiny_model_path, oracle, diagnose={"examples": 2}) as server:
        yield server


def _diagnose(live: LiveServer, doc: dict[str, Any] = DOC, **extra: Any) -> httpx.Response:
    return httpx.post(f"{live.base_url}/v1/diagnose", json={"document": doc, **extra}, timeout=120)


def test_a_diagnosis_is_validated_filtered_deduplicated_and_ranked(
    live: LiveServer, oracle: FaultServer
) -> None:
    oracle.reset(oracle_says(json.dumps({"suggestions": SUGGESTIONS})))
    r = _diagnose(live)
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["object"], d["category"], d["template"], d["model"], d["cached"]) == (
        "diagnosis",
        "error",
        "error.v1",
        "diag",
        False,
    )
    kept = [(s["index"], s["suggestion"], s["confidence"]) for s in d["suggestions"]]
    assert kept == [
        (1, "Add the missing user_id field to the session payload", 0.9),
        (2, "Increase the connection pool size", 0.7),
        (3, "Decrease the connection pool size", 0.65),
    ]
    first, increase, decrease = d["suggestions"]
    assert first["components"] == ["api"] and "unknown component 'mainframe' removed" in first["notes"]
    assert "contradicts suggestion" in " ".join(increase["notes"]) and decrease["notes"]
    reasons = {x["suggestion"]: x["reason"] for x in d["dropped"]}
    assert reasons["Reboot the mainframe"].startswith("names only unknown components")
    assert reasons["Rewrite everything in Rust"] == "confidence 0.2 below 0.6"
    assert reasons["Add the missing user_id field to the session payload."].startswith("near-duplicate of")
    assert len(d["examples"]) == 2 and all(e.startswith("error-") for e in d["examples"])
    assert d["usage"] == {"prompt_tokens": 100, "completion_tokens": 50}
    (asked,) = [json.loads(x.body) for x in oracle.requests if x.path == "/v1/chat/completions"]
    prompt = asked["messages"][0]["content"]
    assert "- KeyError | 'user_id' | id=e1 component=api" in prompt
    assert "api, db-pool, e1, postgres" in prompt  # the names a suggestion may use
    assert asked["response_format"]["type"] == "json_schema"  # the output is held to the schema


def test_a_repeated_diagnosis_comes_from_the_cache(live: LiveServer, oracle: FaultServer) -> None:
    oracle.reset(oracle_says(json.dumps({"suggestions": SUGGESTIONS[:1]})))
    doc = {**DOC, "summary": "cache me"}
    first = _diagnose(live, doc).json()
    again = _diagnose(live, doc).json()
    assert again["cached"] is True and again["id"] == first["id"]
    assert len([x for x in oracle.requests if x.path == "/v1/chat/completions"]) == 1
    assert _diagnose(live, doc, min_confidence=0.95).json()["cached"] is False  # other options: new key
    info = httpx.get(f"{live.base_url}/v1/diagnose/model").json()
    assert info["cache"]["hits"] >= 1


def test_a_diagnosis_can_be_read_back_and_given_feedback(live: LiveServer, oracle: FaultServer) -> None:
    oracle.reset(oracle_says(json.dumps({"suggestions": SUGGESTIONS[:1]})))
    d = _diagnose(live, {**DOC, "summary": "feedback"}).json()
    stored = httpx.get(f"{live.base_url}/v1/diagnose/{d['id']}").json()
    assert stored["suggestions"][0]["suggestion"] == d["suggestions"][0]["suggestion"]
    url = f"{live.base_url}/v1/diagnose/{d['id']}/feedback"
    ok = httpx.post(
        url, json={"suggestion": 1, "applied": True, "worked": True, "rating": 5, "rater": "alice"}
    )
    assert ok.status_code == 200 and ok.json()["recorded"] is True
    for body, status in (
        ({"suggestion": 2, "worked": True}, 400),  # it has one suggestion
        ({"suggestion": 1, "rating": 9}, 400),
        ({"suggestion": 1, "colour": "red"}, 400),
    ):
        r = httpx.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(f"{live.base_url}/v1/diagnose/diag-nope/feedback", json={"suggestion": 1})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "diagnosis_not_found"
    assert httpx.get(f"{live.base_url}/v1/diagnose/diag-nope").status_code == 404


def test_bad_documents_are_400_in_openais_envelope(live: LiveServer) -> None:
    for body in ({"document": {}}, {"document": {"errors": [{"type": "E", "oops": 1}]}}, {"doc": DOC}):
        r = httpx.post(f"{live.base_url}/v1/diagnose", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = _diagnose(live, model="no-such-model")
    assert r.status_code == 404


def test_a_batch_streams_one_line_per_document(live: LiveServer, oracle: FaultServer) -> None:
    oracle.reset(oracle_says(json.dumps({"suggestions": SUGGESTIONS[:1]})))
    docs = [{**DOC, "summary": f"batch {i}"} for i in range(3)]
    docs.append({"logs": [{"message": "DATABASE_URL is not set", "level": "error", "component": "api"}]})
    body = {"documents": docs}
    with httpx.stream("POST", f"{live.base_url}/v1/diagnose/batch", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert sorted(x["index"] for x in lines) == [0, 1, 2, 3]
    by_index = {x["index"]: x for x in lines}
    assert by_index[3]["diagnosis"]["category"] == "configuration"
    bad = httpx.post(f"{live.base_url}/v1/diagnose/batch", json={"documents": []})
    assert bad.status_code == 400


def test_an_output_that_is_not_json_is_reported_not_raised(live: LiveServer, oracle: FaultServer) -> None:
    oracle.reset(oracle_says("I think you should restart it."))
    d = _diagnose(live, {**DOC, "summary": "prose"}).json()
    assert d["suggestions"] == [] and "not JSON" in d["problem"]
    again = _diagnose(live, {**DOC, "summary": "prose"}).json()
    assert again["cached"] is False and again["id"] != d["id"]  # a failed answer is not cached
    assert len([x for x in oracle.requests if x.path == "/v1/chat/completions"]) == 2


def test_the_model_info_lists_templates_and_examples(live: LiveServer) -> None:
    info = httpx.get(f"{live.base_url}/v1/diagnose/model").json()
    assert info["model"] == "diag" and info["embedding_model"] == "all-minilm:l6-v2"
    assert {t.split(".")[0] for t in info["templates"]} == {
        "error",
        "performance",
        "stall",
        "timeout",
        "resource",
        "configuration",
    }
    assert sum(info["examples"].values()) >= 20 and all(n >= 3 for n in info["examples"].values())


def test_the_real_tiny_model_writes_suggestions_that_parse(tmp_path: Path) -> None:
    model = write_tiny_llama_gguf(tmp_path / "long.gguf", context_length=8192)
    settings = make_settings(
        tmp_path / "data",
        engine={"n_ctx": 8192, "n_parallel": 1},
        diagnose={"examples": 0, "min_confidence": 0},
    )
    service = make_service(settings, model)
    server = start_server(settings, service)
    try:
        d = _diagnose(server).json()
        assert "problem" not in d, d  # the grammar held the random model to the schema
        assert d["model"] == TINY
        for s in d["suggestions"]:
            assert 0.0 <= s["confidence"] <= 1.0
            assert set(s["components"]) <= {"api", "db-pool", "e1", "postgres"}
    finally:
        server.stop()
        service.close()


def test_the_report_command_computes_calibration_and_kappa(
    live: LiveServer, oracle: FaultServer, tmp_path: Path
) -> None:
    oracle.reset(oracle_says(json.dumps({"suggestions": [SUGGESTIONS[0], SUGGESTIONS[4]]})))
    d = _diagnose(live, {**DOC, "summary": "report"}).json()
    url = f"{live.base_url}/v1/diagnose/{d['id']}/feedback"
    for rater, worked, rating in (("alice", True, 5), ("bob", True, 4)):
        httpx.post(
            url, json={"suggestion": 1, "applied": True, "worked": worked, "rating": rating, "rater": rater}
        )
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{live.service.settings.data_dir}"\n', encoding="utf-8")
    png = tmp_path / "reliability.png"
    result = CliRunner().invoke(
        app, ["diagnose", "report", "--json", "--png", str(png), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["diagnoses"] >= 1 and 0 < report["coverage"] <= 1
    assert "error" in report["by_category"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.toml"
    empty.write_text(f'data_dir = "{tmp_path / "nothing"}"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["diagnose", "report", "--config", str(empty)])
    assert result.exit_code == 1 and "no diagnoses" in result.output
