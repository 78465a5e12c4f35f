"""The diagnostics document: validation, the stable serializer, category inference, the names a
suggestion may use; parsing model output back into suggestions; the contradiction check; MMR."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from llmhost.apps.diagnose.document import (
    DiagnosticsDocument,
    Suggestion,
    parse_suggestions,
    serialize,
)
from llmhost.apps.diagnose.engine import contradicts
from llmhost.apps.diagnose.examples import mmr

DOC = {
    "summary": "checkout returns 500 after the deploy",
    "errors": [
        {
            "id": "e1",
            "type": "KeyError",
            "message": "'user_id'",
            "stack": ["app.py:10 handler", "db.py:5   fetch"],
            "component": "api",
            "count": 12,
        }
    ],
    "metrics": [{"name": "p95_latency", "expected": 200, "observed": 1800, "unit": "ms", "component": "api"}],
    "logs": [{"level": "error", "message": "request failed", "component": "api", "timestamp": "10:00:01"}],
    "system": {"workers": 4, "python": "3.11", "debug": False, "load": 0.75},
    "relations": [{"source": "api", "target": "postgres", "kind": "depends_on"}],
}


def test_the_serializer_is_stable_and_structured() -> None:
    doc = DiagnosticsDocument.model_validate(DOC)
    text = serialize(doc)
    assert text == serialize(DiagnosticsDocument.model_validate(json.loads(json.dumps(DOC))))
    assert text.splitlines() == [
        "category: error",
        "summary: checkout returns 500 after the deploy",
        "errors:",
        "- KeyError | 'user_id' | x12 | id=e1 component=api | stack: db.py:5 fetch <- app.py:10 handler",
        "metrics:",
        "- p95_latency | observed 1800 ms, expected 200 ms | 9x expected | component=api",
        "logs:",
        "- 10:00:01 | ERROR | request failed | component=api",
        "system:",
        "- debug = false",
        "- load = 0.75",
        "- python = 3.11",
        "- workers = 4",
        "relations:",
        "- api depends_on postgres",
    ]
    assert doc.components() == {"api", "e1", "postgres"}


@pytest.mark.parametrize(
    ("items", "category"),
    [
        (
            {"stalls": [{"kind": "timeout", "operation": "GET /users", "waited_s": 30, "limit_s": 30}]},
            "timeout",
        ),
        ({"stalls": [{"kind": "deadlock", "operation": "txn"}]}, "stall"),
        ({"metrics": [{"name": "memory_rss", "observed": 7.5, "expected": 2}]}, "resource"),
        ({"metrics": [{"name": "p99_latency", "observed": 900, "expected": 100}]}, "performance"),
        ({"logs": [{"message": "DATABASE_URL is not set"}]}, "configuration"),
        ({"category": "resource", "errors": [{"type": "OSError", "message": "No space left"}]}, "resource"),
    ],
)
def test_the_category_follows_the_items_unless_given(items: dict[str, object], category: str) -> None:
    assert DiagnosticsDocument.model_validate(items).resolved_category == category


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"summary": "nothing else"},
        {"errors": [{"type": ""}]},
        {"errors": [{"type": "E", "surprise": 1}]},
        {"metrics": [{"name": "x"}]},
        {"category": "weather", "logs": [{"message": "x"}]},
        {"logs": [{"message": "x"}], "system": {"": 1}},
    ],
)
def test_an_invalid_document_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DiagnosticsDocument.model_validate(bad)


def test_model_output_parses_into_suggestions_with_clamped_confidence() -> None:
    text = json.dumps(
        {
            "suggestions": [
                {
                    "suggestion": "Add the user_id column",
                    "confidence": 1.7,
                    "components": ["api"],
                    "actions": ["migrate"],
                    "rationale": "KeyError",
                },
                {"suggestion": "", "confidence": 0.5},  # not a suggestion: dropped
                "junk",
                {
                    "suggestion": "Roll back",
                    "confidence": 0.4,
                    "components": [],
                    "actions": [],
                    "rationale": "",
                },
            ]
        }
    )
    first, second = parse_suggestions(text)
    assert (first.confidence, first.notes) == (1.0, ["confidence 1.7 was outside 0..1"])
    assert (second.suggestion, second.notes) == ("Roll back", [])
    for bad in ("not json", "[]", '{"suggestions": 3}'):
        with pytest.raises(ValueError):
            parse_suggestions(bad)


def _s(text: str, *actions: str) -> Suggestion:
    return Suggestion(suggestion=text, confidence=0.8, actions=list(actions))


def test_contradicting_suggestions_are_found() -> None:
    assert contradicts(_s("Increase the connection pool size"), _s("Decrease the connection pool size to 5"))
    assert contradicts(_s("Tune", "enable the query cache"), _s("Cache", "disable query cache"))
    assert not contradicts(_s("Increase the pool size"), _s("Decrease the log level"))
    assert not contradicts(_s("Increase the pool size"), _s("Increase the pool size"))


def test_mmr_prefers_relevant_then_diverse() -> None:
    q = np.array([1.0, 0.0, 0.0])
    candidates = np.array(
        [[0.99, 0.14, 0.0], [0.98, 0.2, 0.0], [0.7, 0.0, 0.71], [0.0, 1.0, 0.0]], dtype=np.float64
    )
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    assert mmr(q, candidates, 1) == [0]
    assert mmr(q, candidates, 2, diversity=0.5) == [0, 2]  # the near-copy of 0 gives way
    assert mmr(q, candidates, 2, diversity=0.0) == [0, 1]  # pure relevance
    assert mmr(q, candidates[:0], 3) == []
