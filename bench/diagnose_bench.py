"""The diagnose engine's three seed targets, on the embedded model: p95 < 30 s per diagnosis, > 100
requests/s on cache hits, > 70% cache hits on a repeated workload.

Starts one llmhost (``gemma3:270m`` writes, ``all-minilm:l6-v2`` selects examples and de-duplicates)
and measures, against ``POST /v1/diagnose``:

1. latency: ``--documents`` distinct documents (the shipped examples' documents with a fresh summary,
   so none is cached), one at a time: p50 / p95 / max seconds, and whether every output parsed;
2. a repeated workload: the documents of step 1 (their first requests are the misses) and then
   ``--requests`` more drawn from them (Zipf-like, seeded): the hit ratio over the whole workload, as
   the engine counts it (``GET /v1/diagnose/model``);
3. cache-hit throughput: ``--concurrency`` clients asking cached documents for ``--seconds``.

    .venv/bin/python bench/diagnose_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

EXAMPLES = Path(__file__).resolve().parents[1] / "llmhost" / "apps" / "diagnose" / "examples"


def _documents(n: int, tag: str) -> list[dict[str, Any]]:
    docs = [json.loads(p.read_text(encoding="utf-8"))["document"] for p in sorted(EXAMPLES.glob("*.json"))]
    return [
        {**docs[i % len(docs)], "summary": f"{tag} {i}: {docs[i % len(docs)].get('summary', '')}"}
        for i in range(n)
    ]


def _serve(data: Path, port: int) -> subprocess.Popen[bytes]:
    config = data / "llmhost.toml"
    config.write_text(f'port = {port}\ndata_dir = "{data}"\naccess_log = false\n', encoding="utf-8")
    exe = Path(sys.executable).with_name("llmhost")
    env = {**os.environ, "LLMHOST_CONFIG": str(config)}
    return subprocess.Popen(
        [str(exe), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _ready(base: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become ready")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _hits(base: str, docs: list[dict[str, Any]], concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            k = i
            while time.monotonic() < stop:
                r = await c.post("/v1/diagnose", json={"document": docs[k % len(docs)]})
                assert r.json()["cached"], "expected a cache hit"
                done += 1
                k += 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return done / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18441)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as tmp:
        server = _serve(Path(tmp), args.port)
        try:
            _ready(base)
            with httpx.Client(base_url=base, timeout=600) as c:
                c.post("/v1/diagnose", json={"document": _documents(1, "warm-up")[0]}).raise_for_status()
                before = c.get("/v1/diagnose/model").json()["cache"]
                latencies, problems, counts = [], 0, []
                pool = _documents(args.documents, "fresh")
                for doc in pool:
                    started = time.perf_counter()
                    d = c.post("/v1/diagnose", json={"document": doc}).json()
                    latencies.append(time.perf_counter() - started)
                    problems += "problem" in d
                    counts.append(len(d["suggestions"]))
                    print(
                        f"  {d['category']:<13} {latencies[-1]:6.1f} s  {len(d['suggestions'])} suggestions"
                    )
                print(
                    f"latency: p50 {statistics.median(latencies):.1f} s, p95 {_pct(latencies, 0.95):.1f} s, "
                    f"max {max(latencies):.1f} s, unparsed {problems}",
                    flush=True,
                )
                rng = random.Random(7)
                weights = [1 / (i + 1) for i in range(len(pool))]
                for _ in range(args.requests):
                    c.post(
                        "/v1/diagnose", json={"document": rng.choices(pool, weights)[0]}
                    ).raise_for_status()
                after = c.get("/v1/diagnose/model").json()["cache"]
            hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
            rate = asyncio.run(_hits(base, pool, args.concurrency, args.seconds))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"\nlatency over {len(latencies)} fresh documents: p50 {statistics.median(latencies):.1f} s, "
        f"p95 {_pct(latencies, 0.95):.1f} s, max {max(latencies):.1f} s; outputs that did not parse: "
        f"{problems}; suggestions per diagnosis: mean {statistics.mean(counts):.1f}"
    )
    print(
        f"repeated workload: {len(pool) + args.requests} requests over {len(pool)} documents, "
        f"{hits / (hits + misses):.0%} cache hits"
    )
    print(f"cache hits: {rate:.0f} requests/s with {args.concurrency} clients")


if __name__ == "__main__":
    main()
