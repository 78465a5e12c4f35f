"""Loopback upstreams for the provider tests (one per wire format, started once per module), and the
helpers that read a provider's deltas."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

import pytest

from llmhost.core.stream import ResultBuilder
from llmhost.core.types import ChatMessage, Delta, InferenceRequest, Result, Sampling
from llmhost.providers.base import Provider
from tests.conftest import LiveServer
from tests.providers.fault_server import FaultServer
from tests.providers.wire_servers import anthropic_app, ollama_app, openai_app

ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
OPENAI_KEY = "sk-openai-test-fedcba9876543210"


_SAMPLING = {f.name for f in dataclasses.fields(Sampling)}

P = ParamSpec("P")


class Closeable(Protocol):
    async def aclose(self) -> None: ...


C = TypeVar("C", bound=Closeable)


class MakeProvider(Protocol):
    """``make_provider(cls, *args, **kwargs)``: ``cls(*args, **kwargs)``, closed when the test ends."""

    def __call__(self, factory: Callable[P, C], /, *args: P.args, **kwargs: P.kwargs) -> C: ...


def _request(
    kind: Literal["chat", "completion"], model: str, fields: dict[str, Any], **given: Any
) -> InferenceRequest:
    sampling = Sampling(**{k: v for k, v in fields.items() if k in _SAMPLING})
    rest = {k: v for k, v in fields.items() if k not in _SAMPLING}
    return InferenceRequest(kind, model, sampling=sampling, **given, **rest)


def chat(model: str, *messages: ChatMessage, **fields: Any) -> InferenceRequest:
    """A chat request; ``fields`` are :class:`Sampling` or :class:`InferenceRequest` fields."""
    return _request("chat", model, fields, messages=messages)


def completion(model: str, prompt: str | tuple[int, ...], **fields: Any) -> InferenceRequest:
    """A completion request; ``fields`` as for :func:`chat`."""
    return _request("completion", model, fields, prompt=prompt)


def user(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def system(text: str) -> ChatMessage:
    return ChatMessage("system", text)


async def collect(deltas: AsyncIterator[Delta]) -> list[Delta]:
    return [d async for d in deltas]


def text_of(deltas: list[Delta], index: int = 0) -> str:
    return "".join(d.text for d in deltas if d.index == index)


def assembled(deltas: list[Delta]) -> Result:
    """The whole answer a stream amounts to."""
    builder = ResultBuilder("stream", "m", logprobs=any(d.logprobs for d in deltas))
    for delta in deltas:
        builder.add(delta)
    return builder.result()


def check_stream_shape(deltas: list[Delta], choices: int = 1) -> None:
    """The contract every provider stream keeps: each delta carries output; every choice finishes once;
    the stream ends with exactly one usage delta, index -1."""
    assert deltas[-1].index == -1 and deltas[-1].usage is not None
    assert all(d.usage is None for d in deltas[:-1])
    for d in deltas[:-1]:
        assert d.text or d.tool_calls or d.logprobs or d.finish_reason, d
    finishes = [d.index for d in deltas if d.finish_reason is not None]
    assert sorted(finishes) == list(range(choices))
    for index in range(choices):
        last = max(k for k, d in enumerate(deltas) if d.index == index)
        assert deltas[last].finish_reason is not None  # nothing follows a choice's finish


async def check_provider(provider: Provider, request: InferenceRequest) -> None:
    """``provider`` keeps the :class:`Provider` protocol, which ``isinstance(x, Provider)`` does not prove
    (it only looks for the names): each method has the protocol's parameters and is awaitable exactly
    where the protocol's is, and, called through the protocol, ``stream`` hands back an async iterator
    at once (not a coroutine) whose text is the ``answer``'s, and ``health`` is a bool."""
    methods = {k: v for k, v in vars(Provider).items() if not k.startswith("_") and callable(v)}
    assert set(methods) == {"answer", "stream", "embed", "count_tokens", "list_models", "health", "aclose"}
    for name, spec in methods.items():
        method = getattr(type(provider), name)
        assert inspect.iscoroutinefunction(method) is inspect.iscoroutinefunction(spec), name
        shape = [(p.kind, p.default) for p in inspect.signature(method).parameters.values()]
        assert shape == [(p.kind, p.default) for p in inspect.signature(spec).parameters.values()], name
    assert isinstance(provider.name, str) and provider.name
    deltas = provider.stream(request)
    assert isinstance(deltas, AsyncIterator) and not inspect.isawaitable(deltas)
    streamed = await collect(deltas)
    check_stream_shape(streamed)
    result = await provider.answer(request)
    assert isinstance(result, Result) and result.text and text_of(streamed) == result.text
    assert await provider.health() is True


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def make_provider() -> AsyncIterator[MakeProvider]:
    """A factory for providers (or anything else with ``aclose``: an ``UpstreamClient``): every object
    it made is closed at the end of the test, newest first, whether the test passed or not."""
    made: list[Closeable] = []

    def make(factory: Callable[P, C], /, *args: P.args, **kwargs: P.kwargs) -> C:
        obj = factory(*args, **kwargs)
        made.append(obj)
        return obj

    yield make
    for obj in reversed(made):
        await obj.aclose()


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[LiveServer]:
    live = LiveServer(anthropic_app(ANTHROPIC_KEY)).start(wait_ready=False)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def ollama_upstream() -> Iterator[LiveServer]:
    live = LiveServer(ollama_app()).start(wait_ready=False)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def openai_upstream() -> Iterator[LiveServer]:
    live = LiveServer(openai_app(OPENAI_KEY)).start(wait_ready=False)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def _fault_server() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


@pytest.fixture
def faults(_fault_server: FaultServer) -> FaultServer:
    """The fault server, answering correctly until the test sets ``faults.fault``."""
    _fault_server.reset()
    return _fault_server
