"""The load generator against a real llmhost server (tiny model)."""

from __future__ import annotations

import asyncio

from llmhost.bench import make_prompts, percentile, run_load
from tests.conftest import TINY, LiveServer


def test_run_load_streams_against_llmhost(server: LiveServer) -> None:
    result = asyncio.run(
        run_load(
            server.base_url,
            TINY,
            concurrency=2,
            requests=4,
            prompt=make_prompts(4, 8),
            max_tokens=4,
        )
    )
    assert result.n_ok == 4, result.error_samples
    assert result.n_errors == 0
    assert result.n_429 == 0
    assert result.n_truncated == 0
    assert result.aggregate_tps > 0
    assert result.ttft_p50 is not None and result.ttft_p50 > 0
    assert result.completion_tokens == sum(r.tokens for r in result.records)
    assert "| x | y | 4 | 0 |" in result.to_row("x", "y")


def test_run_load_chat_endpoint(server: LiveServer) -> None:
    result = asyncio.run(
        run_load(server.base_url, TINY, concurrency=2, requests=2, prompt="hi", max_tokens=3, endpoint="chat")
    )
    assert result.n_ok == 2, result.error_samples
    assert result.n_errors == 0


def test_run_load_counts_http_errors(server: LiveServer) -> None:
    result = asyncio.run(
        run_load(server.base_url, "no-such-model", concurrency=1, requests=2, prompt="hi", max_tokens=2)
    )
    assert result.n_ok == 0
    assert result.n_errors == 2
    assert all(r.status == 404 for r in result.records)


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == 9.5
