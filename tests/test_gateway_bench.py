"""The gateway benchmark's own parts: the trivial upstream speaks OpenAI's JSON and SSE to the official
client, ``bench/gateway_compare.py``'s wrk script, wrk-output parsing, TTFB client and verdicts work, and
``bench/bench_latency.py`` runs (a few pairs; its numbers are not judged here). Nothing here runs wrk or
LiteLLM."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from openai import OpenAI

from llmhost.config import load_settings

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    """Import a script from ``bench/`` (not a package) by path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


upstream = _load("trivial_upstream")
gc = _load("gateway_compare")
bench_latency = _load("bench_latency")

ANSWER = "".join(upstream.CONTENT_PIECES)

# wrk 4.1's output for `wrk -t2 -c16 -d3s --latency -s post.lua URL`, with the BENCH line our script prints.
WRK_WITH_SCRIPT = """\
Running 3s test @ http://127.0.0.1:18902/v1/chat/completions
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   433.20ms   40.12ms 557.92ms   80.00%
    Req/Sec    20.10     10.01    40.00     60.00%
  Latency Distribution
     50%  449.55ms
     75%  460.01ms
     90%  476.88ms
     99%  535.76ms
  101 requests in 3.00s, 143.20KB read
  Non-2xx or 3xx responses: 2
Requests/sec:     33.63
Transfer/sec:     47.73KB
BENCH requests=101 duration_us=3003159 non2xx=2 connect=0 read=1 write=0 status=2 timeout=3 \
p50_us=449553 p90_us=476882 p99_us=535755 mean_us=433199.1 max_us=557923
"""

# The same kind of run without our script's `done` hook: wrk's own text only.
WRK_PLAIN = """\
Running 10s test @ http://127.0.0.1:8080/v1/chat/completions
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   115.54us  326.28us   7.43ms   98.06%
    Req/Sec    11.93k     2.18k   15.62k    67.74%
  Latency Distribution
     50%   76.00us
     75%   93.00us
     90%  108.00us
     99%    1.65ms
  36876 requests in 3.11s, 12.66MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  11868.39
Transfer/sec:      4.07MB
"""


@pytest.fixture(scope="module")
def base_url() -> Any:
    with upstream.running_in_thread() as url:
        yield url


def test_upstream_answers_chat_completion_to_the_openai_client(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)

    resp = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "hi"}])

    assert resp.object == "chat.completion"
    assert resp.model == "bench"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == len(upstream.CONTENT_PIECES)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_upstream_streams_sse_chunks_with_usage_to_the_openai_client(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)

    chunks = list(
        client.chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert all(c.object == "chat.completion.chunk" and c.model == "m1" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(upstream.CONTENT_PIECES)


def test_upstream_stream_has_no_usage_chunk_unless_asked(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)

    chunks = list(client.chat.completions.create(model="m", messages=[], stream=True))

    assert all(c.choices and c.usage is None for c in chunks)


def test_upstream_lists_its_model_and_keeps_the_connection_alive(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)

    for _ in range(3):  # several requests over the client's one pooled connection
        assert [m.id for m in client.models.list()] == ["bench"]


def test_wrk_script_posts_the_body_and_counts_non_2xx_answers() -> None:
    script = gc.wrk_lua({"model": "bench", "stream": False}, {"Authorization": "Bearer k"})

    assert 'wrk.method = "POST"' in script
    assert 'wrk.body = [==[{"model":"bench","stream":false}]==]' in script
    assert 'wrk.headers["Authorization"] = "Bearer k"' in script
    assert "function response(status, headers, body)" in script
    assert 'n = n + t:get("non2xx")' in script
    assert "BENCH requests=%d" in script


def test_wrk_script_refuses_a_body_that_would_end_the_lua_string() -> None:
    with pytest.raises(ValueError):
        gc.wrk_lua({"content": "]==]"}, {})


def test_parse_wrk_prefers_the_scripts_exact_line() -> None:
    r = gc.parse_wrk(WRK_WITH_SCRIPT)

    assert r.requests == 101
    assert r.duration_s == pytest.approx(3.003159)
    assert r.rps == pytest.approx(101 / 3.003159)
    assert r.p50_ms == pytest.approx(449.553)
    assert r.p90_ms == pytest.approx(476.882)
    assert r.p99_ms == pytest.approx(535.755)
    assert r.max_ms == pytest.approx(557.923)
    assert r.non2xx == 2
    assert r.socket_errors == 4  # read 1 + timeout 3 (wrk's `status` errors are the non-2xx again)
    assert r.errors == 6


def test_parse_wrk_reads_wrks_own_latency_text() -> None:
    r = gc.parse_wrk(WRK_PLAIN)

    assert r.requests == 36876
    assert r.duration_s == pytest.approx(3.11)
    assert r.rps == pytest.approx(11868.39)
    assert r.p50_ms == pytest.approx(0.076)
    assert r.p90_ms == pytest.approx(0.108)
    assert r.p99_ms == pytest.approx(1.65)
    assert r.mean_ms == pytest.approx(0.11554)
    assert r.max_ms == pytest.approx(7.43)
    assert r.non2xx == 5
    assert r.socket_errors == 3


def test_parse_wrk_rejects_output_it_does_not_know() -> None:
    with pytest.raises(ValueError):
        gc.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.parametrize(
    ("text", "ms"), [("76.00us", 0.076), ("1.25ms", 1.25), ("2.00s", 2000.0), ("1.50m", 90000.0)]
)
def test_wrk_durations_convert_to_milliseconds(text: str, ms: float) -> None:
    assert gc.wrk_duration_ms(text) == pytest.approx(ms)


def test_ttfb_client_times_the_first_body_byte_not_the_whole_stream() -> None:
    """Without usage the stream is 6 writes: the head with the first chunks, then 5 more, ``DELAY``
    apart, so each stream takes at least 5 delays, and its first body byte comes before all of them.
    A client that timed the whole stream would report at least 5 delays; the bound, half of the
    stream's own time, leaves the first byte 2.5 delays (0.5 s) of scheduling slack."""
    delay = 0.2
    with upstream.running_in_thread(chunk_delay=delay) as url:
        t0 = time.perf_counter()
        times = gc.measure_ttfb(f"{url}/v1/chat/completions", gc.STREAM_BODY, {"X-Any": "1"}, 2)
        per_stream = (time.perf_counter() - t0) / 2

    assert len(times) == 2 and all(t > 0 for t in times)
    assert per_stream >= 5 * delay * 0.99  # each stream was drained to its end over the kept-alive connection
    assert max(times) < per_stream / 2


def test_ttfb_client_reuses_one_connection_for_many_streams(base_url: str) -> None:
    times = gc.measure_ttfb(f"{base_url}/v1/chat/completions", gc.STREAM_BODY, {}, 20)

    assert len(times) == 20 and all(t > 0 for t in times)


def test_llmhost_config_routes_bench_to_the_upstream(tmp_path: Path) -> None:
    path = tmp_path / "llmhost.toml"
    path.write_text(gc.llmhost_config("http://127.0.0.1:9"))

    settings = load_settings(path)

    assert settings.providers["up"].type == "openai"
    assert settings.providers["up"].base_url == "http://127.0.0.1:9/v1"
    assert [(t.provider, t.model) for t in settings.routes[gc.ROUTE].targets] == [("up", "bench")]
    assert settings.default_model == ""
    assert settings.api_key is not None and settings.api_key.get_secret_value() == gc.API_KEY


def _measurement(server: str, p50: float, rps: float, ttfb: float, errors: int = 0) -> Any:
    c1 = gc.WrkResult(requests=100, duration_s=1.0, rps=1000 / p50, p50_ms=p50, p99_ms=p50 * 2)
    c16 = gc.WrkResult(requests=int(rps), duration_s=1.0, rps=rps, p50_ms=16000 / rps, non2xx=errors)
    return gc.Measurement(server, 0, c1, c16, ttfb, {server: 1.0, "wrk": 0.1}, 0.0)


def test_verdicts_follow_the_issues_targets() -> None:
    report = gc.Report()
    report.measurements += [
        _measurement(gc.UPSTREAM, 0.07, 20000, 0.06),
        _measurement(gc.LLMHOST, 1.5, 1000, 1.8),
        _measurement(gc.LITELLM, 20.0, 50, 20.1),
    ]

    verdicts = {label: ok for label, ok, _ in gc.checks(report)}

    assert list(verdicts.values()) == [True, True, True, True, True]
    table = gc.markdown_table(report)
    assert "| llmhost | 1.500 |" in table and "**20.0x**" in table


def test_verdicts_fail_on_slow_or_erroring_llmhost_and_skip_an_unmeasured_litellm() -> None:
    report = gc.Report()
    report.measurements += [
        _measurement(gc.UPSTREAM, 0.07, 20000, 0.06),
        _measurement(gc.LLMHOST, 2.5, 200, 3.0, errors=1),
    ]

    verdicts = [ok for _, ok, _ in gc.checks(report)]

    # added latency, ratio vs LiteLLM (not measured), errors, TTFB, upstream not the bottleneck
    assert verdicts == [False, None, False, False, True]


def test_bench_latency_times_both_paths_and_its_check_fails_above_the_bound() -> None:
    """The provider-latency bench still runs against the client it measures (a few pairs, no timing
    judged): every pair timed on both paths, and ``--max-added-ms`` decides the exit status."""
    with upstream.running_in_thread() as url:
        timings = asyncio.run(bench_latency.measure(url, 3, warmup=1))
    assert [t.name for t in timings] == ["answer", "stream"]
    assert all(len(t.direct) == len(t.provider) == 3 and min(t.direct + t.provider) > 0 for t in timings)
    assert bench_latency.main(["-n", "3", "--warmup", "1", "--max-added-ms", "1e9"]) == 0
    assert bench_latency.main(["-n", "3", "--warmup", "1", "--max-added-ms=-1e9"]) == 1
