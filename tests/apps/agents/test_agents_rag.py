"""An agent with a dataset: the answer is built on retrieved chunks, which come back as citations
(whole answers and streams), are recorded in the run, and count in the scorecard's retrieval rate."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import TINY, ServerFactory

DOCS = {
    "volcano.md": "Mount Etna is an active volcano on the east coast of Sicily, erupting often.",
    "bread.md": "Sourdough bread rises with a starter of wild yeast and lactic acid bacteria.",
    "router.md": "To reset the router, hold the reset button for ten seconds until the light blinks.",
}
BIG = {"engine": {"n_ctx": 4096, "n_parallel": 2}}


def _setup(base: str) -> None:
    httpx.post(f"{base}/v1/datasets", json={"name": "manuals"}, timeout=60).raise_for_status()
    for name, text in DOCS.items():
        r = httpx.post(
            f"{base}/v1/datasets/manuals/documents", json={"name": name, "text": text}, timeout=120
        )
        assert r.status_code == 200, r.text
    agent = {
        "name": "support",
        "model": TINY,
        "datasets": ["manuals"],
        "retrieval_k": 2,
        "sampling": {"max_tokens": 3},
    }
    httpx.post(f"{base}/v1/agents", json=agent).raise_for_status()


def _ask(base: str, **extra: Any) -> httpx.Response:
    body = {
        "model": "support",
        "messages": [{"role": "user", "content": "How do I reset my router?"}],
        **extra,
    }
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)


def test_a_cited_answer_from_the_agents_dataset(make_server: ServerFactory) -> None:
    live = make_server(**BIG)
    base = live.base_url
    _setup(base)
    r = _ask(base)
    assert r.status_code == 200, r.text
    citations = r.json()["citations"]
    assert [c["index"] for c in citations] == [1, 2]
    top = citations[0]
    assert top["document"] == "router.md" and top["dataset"] == "manuals"
    assert DOCS["router.md"][top["start"] : top["end"]] == top["text"]
    run = httpx.get(f"{base}/v1/agents/support/runs").json()["data"][0]
    assert run["retrieved"][0]["document"] == "router.md"
    # The chunks went into the prompt: far more prompt tokens than the question alone.
    assert run["prompt_tokens"] > len("How do I reset my router?") + len(DOCS["router.md"])
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        timeout=60,
        json={
            "model": "support",
            "messages": [{"role": "user", "content": "How do I reset my router?"}],
            "stream": True,
        },
    ) as streamed:
        first = next(json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {"))
    assert first["citations"][0]["document"] == "router.md"
    card = httpx.get(f"{base}/v1/agents/support/scorecard").json()
    assert card["retrieval"] == {"runs_with_retrieval": 2, "rate": 1.0}


def test_a_dataset_in_use_by_an_agent_cannot_be_missing(make_server: ServerFactory) -> None:
    live = make_server()
    r = httpx.post(f"{live.base_url}/v1/agents", json={"name": "a", "model": TINY, "datasets": ["nope"]})
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
