"""Added latency of OpenAICompatProvider over a direct call to the same loopback upstream.

    .venv/bin/python -m tests.providers.bench_latency [N]

Both sides use the provider's own pooled client, interleaved request by request, so the difference is
only the provider's work (core types to JSON and back, deadlines, error checks, stream decoding).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from llmhost.providers.openai_compat import OpenAICompatProvider
from tests.conftest import LiveServer
from tests.providers.conftest import chat, user
from tests.providers.wire_servers import openai_app

MESSAGES = [{"role": "user", "content": "hello there general kenobi"}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000


async def measure(base_url: str, n: int) -> None:
    provider = OpenAICompatProvider("bench", f"{base_url}/v1")
    client = provider._http.client
    request = chat("echo-1", user(MESSAGES[0]["content"]), max_tokens=8)
    body = {"model": "echo-1", "messages": MESSAGES, "max_tokens": 8}
    plain = json.dumps(body).encode()
    streamed = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode()

    async def direct() -> None:
        json.loads((await client.request("POST", "/chat/completions", plain))[1])

    async def via_provider() -> None:
        await provider.answer(request)

    async def direct_stream() -> None:
        response = await client.send("POST", "/chat/completions", streamed)
        try:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])
        finally:
            await response.aclose()

    async def provider_stream() -> None:
        async for _ in provider.stream(request):
            pass

    for name, a, b in (("answer", direct, via_provider), ("stream", direct_stream, provider_stream)):
        for _ in range(50):  # warm up the pool and both code paths
            await a()
            await b()
        times_a: list[float] = []
        times_b: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            await a()
            t1 = time.perf_counter()
            await b()
            t2 = time.perf_counter()
            times_a.append(t1 - t0)
            times_b.append(t2 - t1)
        diffs = [y - x for x, y in zip(times_a, times_b, strict=True)]
        print(
            f"{name:12s} n={n}  direct p50 {pct(times_a, 0.5):.3f} ms p90 {pct(times_a, 0.9):.3f} ms | "
            f"provider p50 {pct(times_b, 0.5):.3f} ms p90 {pct(times_b, 0.9):.3f} ms | "
            f"added p50 {(statistics.median(times_b) - statistics.median(times_a)) * 1000:.3f} ms, "
            f"median pairwise {statistics.median(diffs) * 1000:.3f} ms"
        )
    await provider.aclose()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    live = LiveServer(openai_app()).start(wait_ready=False)
    try:
        asyncio.run(measure(live.base_url, n))
    finally:
        live.stop()


if __name__ == "__main__":
    main()
