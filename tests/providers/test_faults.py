"""How providers fail: refused and hanging connects, stalls, error statuses and cut streams.

Every failure is a ``ProviderError`` subclass; ``retryable`` and the moment it is raised (before any
chunk, or after some) are what the router acts on.

Timeouts are checked by what they cut: each stall is far longer than its timeout (10 s or more against
well under 1 s), and the call must end, with the timeout's own error, under ``CUT`` seconds, long
before the stall would have ended by itself. A deadline never fires early, so each also takes at
least its timeout. There is no tighter upper bound: on a busy 2-core machine a timer may run late.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from llmhost.core.types import Delta
from llmhost.providers.anthropic import AnthropicProvider
from llmhost.providers.base import (
    ProviderConnectionError,
    ProviderHTTPError,
    ProviderStreamError,
    ProviderTimeoutError,
)
from llmhost.providers.http import Timeouts, UpstreamHTTPError
from llmhost.providers.ollama import OllamaProvider
from llmhost.providers.openai_compat import OpenAICompatProvider
from tests.providers.conftest import MakeProvider, chat, user
from tests.providers.fault_server import Fault, FaultServer, closed_port, full_backlog

pytestmark = pytest.mark.anyio

REQUEST = chat("m", user("hi"))
STALL = 10.0  # seconds the fault server stalls where a test makes it
CUT = 5.0  # a call that ends sooner than this was cut by its timeout, not by the end of the stall


def provider(make_provider: MakeProvider, base_url: str, **timeouts: float) -> OpenAICompatProvider:
    return make_provider(
        OpenAICompatProvider, "flaky", base_url, api_key="sk-test", timeouts=Timeouts(**timeouts)
    )


@pytest.fixture
def flaky(faults: FaultServer, make_provider: MakeProvider) -> OpenAICompatProvider:
    return provider(make_provider, faults.base_url, connect=1, first_token=0.3, total=0.6)


async def drain(deltas: AsyncIterator[Delta], into: list[Delta]) -> None:
    async for delta in deltas:
        into.append(delta)


def contents(deltas: list[Delta]) -> list[str]:
    return [d.text for d in deltas if d.text]


async def test_the_fault_server_answers_correctly_by_default(flaky: OpenAICompatProvider) -> None:
    assert (await flaky.answer(REQUEST)).text == "ok"
    chunks: list[Delta] = []
    await drain(flaky.stream(REQUEST), chunks)
    assert contents(chunks) == ["tok0", "tok1", "tok2"]
    assert chunks[-2].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_a_refused_connection_is_a_retryable_connection_error(make_provider: MakeProvider) -> None:
    p = provider(make_provider, f"http://127.0.0.1:{closed_port()}/v1")
    with pytest.raises(ProviderConnectionError) as info:
        await p.answer(REQUEST)
    assert info.value.retryable and info.value.provider == "flaky"
    with pytest.raises(ProviderConnectionError):
        await drain(p.stream(REQUEST), [])
    assert await p.health() is False


async def test_a_connect_that_hangs_times_out_after_the_connect_timeout(make_provider: MakeProvider) -> None:
    """The connect would hang for ever, and the total timeout is far off: only the connect timeout can
    end it (with its own message)."""
    with full_backlog() as port:
        p = provider(make_provider, f"http://127.0.0.1:{port}/v1", connect=0.3, total=30)
        start = time.monotonic()
        with pytest.raises(ProviderTimeoutError, match=r"connect timeout \(0.3s\)") as info:
            await p.answer(REQUEST)
        assert 0.3 <= time.monotonic() - start < CUT
        assert info.value.retryable


async def test_no_headers_within_the_total_timeout_is_a_timeout(
    faults: FaultServer, flaky: OpenAICompatProvider
) -> None:
    faults.fault = Fault(stall_before_headers=STALL)
    start = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match=r"total timeout \(0.6s\) exceeded") as info:
        await flaky.answer(REQUEST)
    assert 0.6 <= time.monotonic() - start < CUT
    assert info.value.retryable


async def test_a_stream_without_headers_times_out_at_the_first_token_timeout(
    faults: FaultServer, flaky: OpenAICompatProvider
) -> None:
    faults.fault = Fault(stall_before_headers=STALL)
    start = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match=r"first-token timeout \(0.3s\) exceeded"):
        await drain(flaky.stream(REQUEST), [])
    assert 0.3 <= time.monotonic() - start < CUT


async def test_a_role_chunk_alone_does_not_count_as_the_first_token(
    faults: FaultServer, flaky: OpenAICompatProvider
) -> None:
    """Headers and the role-only chunk arrive at once, then nothing: nothing is yielded, a timeout raised."""
    faults.fault = Fault(stall_before_first_chunk=STALL)
    got: list[Delta] = []
    start = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match=r"first-token timeout \(0.3s\) exceeded"):
        await drain(flaky.stream(REQUEST), got)
    assert 0.3 <= time.monotonic() - start < CUT
    assert got == []


async def test_a_stall_after_tokens_is_a_stream_error_at_the_total_timeout(
    faults: FaultServer, flaky: OpenAICompatProvider
) -> None:
    faults.fault = Fault(stall_after=2, mid_stream_stall=3 * STALL)
    got: list[Delta] = []
    start = time.monotonic()
    with pytest.raises(ProviderStreamError, match=r"total timeout \(0.6s\)"):
        await drain(flaky.stream(REQUEST), got)
    assert 0.6 <= time.monotonic() - start < CUT
    assert contents(got) == ["tok0", "tok1"]


async def test_a_slow_consumer_is_not_cut_by_the_first_token_timeout(
    faults: FaultServer, make_provider: MakeProvider
) -> None:
    """Deadlines bound waits on the upstream, not the time the caller spends between chunks."""
    p = provider(make_provider, faults.base_url, first_token=0.2, total=5)
    got: list[Delta] = []
    async for chunk in p.stream(REQUEST):
        got.append(chunk)
        await asyncio.sleep(0.1)
    assert len(got) == 5  # three tokens, the finish, the usage


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (401, False)]
)
async def test_error_statuses_carry_the_upstream_message_and_their_retryability(
    faults: FaultServer, flaky: OpenAICompatProvider, status: int, retryable: bool, stream: bool
) -> None:
    error = {"error": {"message": f"upstream says {status}", "type": "x", "param": None, "code": None}}
    faults.fault = Fault(status=status, error=error)
    with pytest.raises(ProviderHTTPError) as info:
        if stream:
            await drain(flaky.stream(REQUEST), [])
        else:
            await flaky.answer(REQUEST)
    assert info.value.status == status and info.value.retryable is retryable
    assert f"upstream says {status}" in str(info.value)
    assert info.value.body == error


async def test_429_passes_on_retry_after(faults: FaultServer, flaky: OpenAICompatProvider) -> None:
    faults.fault = Fault(status=429, error={"error": {"message": "slow down"}}, headers={"Retry-After": "7"})
    with pytest.raises(UpstreamHTTPError) as info:
        await flaky.answer(REQUEST)
    assert info.value.retry_after == 7.0 and info.value.retryable


async def test_an_error_without_an_envelope_still_says_what_happened(
    faults: FaultServer, flaky: OpenAICompatProvider
) -> None:
    faults.fault = Fault(status=502, error=None)
    with pytest.raises(ProviderHTTPError, match="HTTP 502") as info:
        await flaky.answer(REQUEST)
    assert info.value.retryable and info.value.body is None


async def test_a_cut_stream_raises_a_stream_error_after_the_chunks_already_yielded(
    faults: FaultServer, flaky: OpenAICompatProvider
) -> None:
    faults.fault = Fault(chunks=5, cut_after=2)
    got: list[Delta] = []
    with pytest.raises(ProviderStreamError, match="stream broke after it started"):
        await drain(flaky.stream(REQUEST), got)
    assert contents(got) == ["tok0", "tok1"]


async def test_a_stream_cut_before_any_token_is_a_retryable_connection_error(
    faults: FaultServer, flaky: OpenAICompatProvider
) -> None:
    faults.fault = Fault(cut_after=0)
    got: list[Delta] = []
    with pytest.raises(ProviderConnectionError) as info:
        await drain(flaky.stream(REQUEST), got)
    assert got == [] and info.value.retryable


async def test_the_pool_survives_failures(faults: FaultServer, flaky: OpenAICompatProvider) -> None:
    faults.fault = Fault(chunks=5, cut_after=1)
    with pytest.raises(ProviderStreamError):
        await drain(flaky.stream(REQUEST), [])
    faults.reset()
    assert (await flaky.answer(REQUEST)).text == "ok"


async def test_an_abandoned_stream_gives_its_connection_back(
    faults: FaultServer, make_provider: MakeProvider
) -> None:
    p = make_provider(
        OpenAICompatProvider, "flaky", faults.base_url, timeouts=Timeouts(total=2), max_connections=1
    )
    async with contextlib.aclosing(p.stream(REQUEST)) as chunks:
        async for _ in chunks:
            break  # the caller went away after the first chunk
    # the only pooled connection must be free again, or this would wait for the total timeout
    assert (await p.answer(REQUEST)).text == "ok"


async def test_an_answer_of_the_wrong_shape_is_a_retryable_502(
    faults: FaultServer, make_provider: MakeProvider
) -> None:
    ollama = make_provider(OllamaProvider, "ollama", faults.base_url, timeouts=Timeouts(total=2))
    claude = make_provider(AnthropicProvider, "claude", faults.base_url, timeouts=Timeouts(total=2))
    faults.fault = Fault(answer={"message": "not an object", "done": True})
    with pytest.raises(ProviderHTTPError, match="malformed") as info:
        await ollama.answer(REQUEST)
    assert info.value.status == 502 and info.value.retryable
    faults.reset()  # an OpenAI SSE stream is not a Messages API stream
    with pytest.raises(ProviderHTTPError) as info:
        await drain(claude.stream(REQUEST), [])
    assert info.value.status == 502


async def test_ollama_fails_the_same_way(make_provider: MakeProvider) -> None:
    p = make_provider(OllamaProvider, "ollama", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ProviderConnectionError):
        await p.answer(REQUEST)
    assert await p.health() is False
