"""A small asyncio load generator for any OpenAI-compatible endpoint (llmhost, llama.cpp's server, ...).

Every request streams (SSE, parsed by hand) and records its time to first token, completion tokens,
per-stream decode speed, status and whether the stream ended without a ``finish_reason``. The generator
is deliberately cheap: it shares the CPU with the servers it measures, so per-chunk work is one
``json.loads`` and a clock read.

    result = asyncio.run(run_load("http://127.0.0.1:8080", "gemma3:270m", concurrency=8, requests=16,
                                  prompt=make_prompts(16, 64), max_tokens=128))
    print(BenchResult.header()); print(result.to_row("8 streams", "llmhost"))
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

__all__ = ["BenchResult", "RequestRecord", "make_prompt", "make_prompts", "percentile", "run_load"]

# Common English words that are (almost always) one token each, with their leading space, for the
# vocabularies of the usual model families; the prompt length in tokens is then close to the word count.
_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his her their this which have are had not but "
    "one all were when there can an been has more would who will some what out them into time only new "
    "other could two first may then these after over its also most made people years such where back way "
    "work life day world under great house water place old city name part end school small state long high "
    "game music family war government number show same right line power book story group play history "
    "country early river point light open face road field team west north south east land"
)
_WORDS = _WORD_TEXT.split()


def make_prompt(n_tokens: int, variant: int = 0) -> str:
    """A prompt of about ``n_tokens`` tokens. Different ``variant``s differ from their first word, so
    servers with prefix caching cannot reuse one request's prompt for another."""
    words = [f"Story {variant}:"]
    state = (variant * 2654435761 + 12345) & 0xFFFFFFFF
    while len(words) < max(1, n_tokens - 3):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        words.append(_WORDS[state % len(_WORDS)])
    return " ".join(words)


def make_prompts(n: int, n_tokens: int, start: int = 0) -> list[str]:
    return [make_prompt(n_tokens, start + i) for i in range(n)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100), or None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class RequestRecord:
    """What one streamed request did. Times are seconds on ``time.perf_counter``'s clock."""

    index: int
    status: int = 0  # HTTP status; 0 when no response came (connection error, timeout)
    error: str | None = None
    retry_after: bool = False  # a 429 carried a Retry-After header
    t_start: float = 0.0
    t_first: float | None = None  # first content token
    t_last: float | None = None  # last content token
    t_end: float = 0.0
    content_chunks: int = 0
    usage_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.content_chunks

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_start

    @property
    def decode_tps(self) -> float | None:
        if self.t_first is None or self.t_last is None or self.tokens < 2 or self.t_last <= self.t_first:
            return None
        return (self.tokens - 1) / (self.t_last - self.t_first)

    @property
    def truncated(self) -> bool:
        return self.status == 200 and self.error is None and self.finish_reason is None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.finish_reason is not None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class BenchResult:
    n_ok: int
    n_errors: int  # failures other than 429 and truncation
    n_429: int
    n_429_retry_after: int  # 429s that carried a Retry-After header
    n_truncated: int  # HTTP 200 streams that ended without a finish_reason
    ttft_p50: float | None
    ttft_p95: float | None
    decode_tps_p50: float | None  # per stream
    aggregate_tps: float  # all completion tokens / wall time of the run
    wall_s: float
    completion_tokens: int
    mean_tokens: float | None  # completion tokens per successful request
    error_samples: list[str] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list, repr=False)

    @classmethod
    def from_records(cls, records: list[RequestRecord], wall_s: float) -> BenchResult:
        ok = [r for r in records if r.ok]
        n_429 = [r for r in records if r.status == 429]
        errors = [r for r in records if not r.ok and not r.truncated and r.status != 429]
        ttfts = [t for r in ok if (t := r.ttft) is not None]
        tps = [t for r in ok if (t := r.decode_tps) is not None]
        tokens = sum(r.tokens for r in records if r.status == 200)
        samples: list[str] = []
        for r in errors:
            msg = f"{r.status}: {r.error}"
            if msg not in samples and len(samples) < 5:
                samples.append(msg)
        return cls(
            n_ok=len(ok),
            n_errors=len(errors),
            n_429=len(n_429),
            n_429_retry_after=sum(1 for r in n_429 if r.retry_after),
            n_truncated=sum(1 for r in records if r.truncated),
            ttft_p50=percentile(ttfts, 50),
            ttft_p95=percentile(ttfts, 95),
            decode_tps_p50=percentile(tps, 50),
            aggregate_tps=tokens / wall_s if wall_s > 0 else 0.0,
            wall_s=wall_s,
            completion_tokens=tokens,
            mean_tokens=sum(r.tokens for r in ok) / len(ok) if ok else None,
            error_samples=samples,
            records=records,
        )

    @staticmethod
    def header() -> str:
        return (
            "| scenario | server | ok | errors | 429 | truncated | TTFT p50 (s) | TTFT p95 (s) "
            "| decode tok/s p50 | aggregate tok/s | tokens/req | wall (s) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|"
        )

    def to_row(self, scenario: str = "", server: str = "") -> str:
        return (
            f"| {scenario} | {server} | {self.n_ok} | {self.n_errors} | {self.n_429} | {self.n_truncated} "
            f"| {_fmt(self.ttft_p50, 3)} | {_fmt(self.ttft_p95, 3)} | {_fmt(self.decode_tps_p50, 1)} "
            f"| {self.aggregate_tps:.1f} | {_fmt(self.mean_tokens, 1)} | {self.wall_s:.1f} |"
        )


def _body(
    endpoint: str, model: str, prompt: str, max_tokens: int, temperature: float, ignore_eos: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True  # llama.cpp's server extension; llmhost supports it too
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


async def _one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], chat: bool, rec: RequestRecord
) -> None:
    rec.t_start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as resp:
            rec.status = resp.status_code
            if resp.status_code != 200:
                rec.retry_after = "retry-after" in resp.headers
                text = (await resp.aread()).decode("utf-8", "replace")
                rec.error = text[:300] or resp.reason_phrase
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event:/id: fields
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    obj = json.loads(data)
                except ValueError:
                    rec.error = f"bad SSE data: {data[:100]}"
                    return
                if obj.get("error"):
                    err = obj["error"]
                    rec.error = str(err.get("message", err) if isinstance(err, dict) else err)[:300]
                    return
                usage = obj.get("usage")
                if usage:
                    rec.usage_tokens = usage.get("completion_tokens")
                for choice in obj.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if piece:
                        now = time.perf_counter()
                        if rec.t_first is None:
                            rec.t_first = now
                        rec.t_last = now
                        rec.content_chunks += 1
                    if choice.get("finish_reason"):
                        rec.finish_reason = choice["finish_reason"]
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        rec.t_end = time.perf_counter()


async def run_load(
    base_url: str,
    model: str,
    *,
    concurrency: int,
    requests: int,
    prompt: str | list[str],
    max_tokens: int,
    api_key: str | None = None,
    endpoint: Literal["chat", "completions"] = "completions",
    temperature: float = 0.0,
    ignore_eos: bool = True,
    timeout: float = 600,
    extra_body: dict[str, Any] | None = None,
) -> BenchResult:
    """Send ``requests`` streamed requests, at most ``concurrency`` at a time, and measure them.

    ``prompt`` is one prompt for every request or a list used round-robin. ``base_url`` is the server's
    root (``http://host:port``) or its ``/v1`` root. ``extra_body`` is merged into every request body.
    """
    if concurrency < 1 or requests < 0:
        raise ValueError("concurrency must be >= 1 and requests >= 0")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt must not be empty")
    root = base_url.rstrip("/")
    if not root.endswith("/v1"):
        root += "/v1"
    url = f"{root}/chat/completions" if endpoint == "chat" else f"{root}/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    records = [RequestRecord(index=i) for i in range(requests)]
    next_index = 0

    async with httpx.AsyncClient(
        headers=headers, limits=limits, timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0))
    ) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                i = next_index
                next_index += 1
                body = _body(endpoint, model, prompts[i % len(prompts)], max_tokens, temperature, ignore_eos)
                if extra_body:
                    body.update(extra_body)
                await _one(client, url, body, endpoint == "chat", records[i])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(requests, 1)))))
        wall = time.perf_counter() - t0
    return BenchResult.from_records(records, wall)
